"""Managed online endpoints through the real MLClient: bodies, LROs, blue/green, predict."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.errors import ConfigError, NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import EndpointState
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.azureml.endpoint_plan import DeployContext
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import make_provider


def _model(root: Path, answer: str = "a") -> Path:
    """A custom model dir whose predictor answers ``answer`` for every row."""
    return make_custom_model(root, answer)


def _new(plan: Any) -> str:
    """The deployment the plan creates."""
    return str(plan.context_as(DeployContext).deployment)


def _bodies(azure: Installed, method: str, fragment: str) -> list[dict[str, Any]]:
    return [r.json() for r in azure.transport.find(method, fragment)]


def test_deploy_sends_the_planned_bodies(provider: Any, azure: Installed, tmp_path: Path) -> None:
    model = _model(tmp_path)
    plan = provider.plan_deploy(Deployment(name="iris-ep", model=str(model), env={"A": "1"}))
    calls = [s.call for s in plan.steps]
    assert calls == [
        "models.CreateOrUpdate",
        "onlineEndpoints.CreateOrUpdate",
        "onlineDeployments.CreateOrUpdate",
        "onlineEndpoints.Update",
    ]
    assert azure.transport.requests == []  # planning is pure
    record = provider.deploy(plan)
    name = _new(plan)
    assert record.state is EndpointState.READY
    assert record.url == "https://inference.fake.azureml.net/iris-ep/score"
    assert record.details["deployments"] == record.details["traffic"] == {name: 100}
    assert record.details["deployment"] == record.details["newest"] == name

    # the model version: uploaded to the datastore, registered under a content version
    sha = modeldir.digest(model)
    (sent_model,) = _bodies(azure, "PUT", f"/models/iris-ep/versions/{sha[:12]}")
    expected = copy.deepcopy(dict(plan.steps[0].request))
    uri = sent_model["properties"]["modelUri"]
    assert "/datastores/workspaceblobstore/paths/LocalUpload/" in uri
    expected["properties"]["modelUri"] = uri
    assert sent_model == expected
    assert any(k.endswith("/model-a/mlcloud-model.yaml") for k in azure.fake.blobs)
    assert record.model_sha256 == sha
    assert provider.store.list_models("iris-ep")[0]["sha256"] == sha

    # endpoint and deployment: the plan's bodies with the workspace location filled in
    sent_endpoint = _bodies(azure, "PUT", "/onlineEndpoints/iris-ep?")[0]
    planned = copy.deepcopy(dict(plan.steps[1].request))
    planned["location"] = "eastus"
    assert sent_endpoint == planned
    (sent_deployment,) = _bodies(azure, "PUT", f"/deployments/{name}?")
    planned = copy.deepcopy(dict(plan.steps[2].request))
    planned["location"] = "eastus"
    assert sent_deployment == planned
    props = sent_deployment["properties"]
    assert props["environmentVariables"] == {"A": "1", "MLCLOUD_SERVING_CONTRACT": "azureml"}
    assert props["instanceType"] == "Standard_DS3_v2" and sent_deployment["sku"]["capacity"] == 1
    env_put = _bodies(azure, "PUT", "/environments/CliV2AnonymousEnvironment/versions/")[0]
    assert env_put["properties"]["image"] == "mlcloudacr.azurecr.io/mlcloud-serve:1"
    assert env_put["properties"]["inferenceConfig"] == {
        "livenessRoute": {"port": 5001, "path": "/"},
        "readinessRoute": {"port": 5001, "path": "/health"},
        "scoringRoute": {"port": 5001, "path": "/score"},
    }
    # the traffic switch, and the long-running operations were polled to the end
    assert _bodies(azure, "PUT", "/onlineEndpoints/iris-ep?")[-1]["properties"]["traffic"] == {
        name: 100
    }
    assert azure.transport.find("GET", "management.azure.com/operations/")


def test_predict_with_the_endpoint_key(provider: Any, azure: Installed, tmp_path: Path) -> None:
    model = str(_model(tmp_path))
    provider.deploy(provider.plan_deploy(Deployment(name="iris-ep", model=model, trust=TRUSTED)))
    # the fake serves the uploaded model files with mlcloud's loader: the model answers "a"
    assert provider.predict("iris-ep", {"instances": [[1, 2], [3]]}) == {"predictions": ["a", "a"]}
    assert provider.predict("iris-ep", [[1]]) == {"predictions": ["a"]}  # a bare list is wrapped
    (score,) = azure.transport.find("POST", "/iris-ep/score")[:1]
    assert score.headers["Authorization"] == "Bearer key-iris-ep"
    with pytest.raises(NotFoundLocally):
        provider.predict("nope", {"instances": []})


def test_redeploy_is_blue_green(provider: Any, azure: Installed, tmp_path: Path) -> None:
    model_a = str(_model(tmp_path))
    first = provider.deploy(
        provider.plan_deploy(Deployment(name="ep1", model=model_a, trust=TRUSTED))
    )
    blue = first.details["deployment"]
    assert provider.predict("ep1", {"instances": [1]}) == {"predictions": ["a"]}
    # the same model again: the same deployment, updated in place
    same = provider.deploy(
        provider.plan_deploy(Deployment(name="ep1", model=model_a, trust=TRUSTED))
    )
    assert same.details["deployment"] == blue and set(azure.fake.deployments("ep1")) == {blue}

    model_b = str(_model(tmp_path, "b"))
    plan = provider.plan_deploy(Deployment(name="ep1", model=model_b, trust=TRUSTED))
    green = _new(plan)
    assert green != blue
    assert [s.call for s in plan.steps][-1] == "onlineDeployments.Delete"
    assert plan.steps[-1].request == {"name": blue}
    start = len(azure.transport.requests)
    record = provider.deploy(plan)
    order = [
        (r.method, r.url.split("/workspaces/ws1")[1].split("?")[0])
        for r in azure.transport.requests[start:]
        if r.method in ("PUT", "DELETE") and "management" in r.url
    ]
    green_put = order.index(("PUT", f"/onlineEndpoints/ep1/deployments/{green}"))
    shift = max(i for i, o in enumerate(order) if o == ("PUT", "/onlineEndpoints/ep1"))
    delete = order.index(("DELETE", f"/onlineEndpoints/ep1/deployments/{blue}"))
    assert green_put < shift < delete  # new beside old, then traffic, then the old goes
    assert record.details["deployments"] == {green: 100}
    assert set(azure.fake.deployments("ep1")) == {green}
    assert [m["version"] for m in provider.store.list_models("ep1")] == [1, 2]
    assert provider.predict("ep1", {"instances": [1]}) == {"predictions": ["b"]}


def test_canary_traffic_and_mirroring(azure: Installed, store: Store, tmp_path: Path) -> None:
    provider = make_provider(store, mirror_traffic=10)
    model_a = str(_model(tmp_path))
    blue = provider.deploy(
        provider.plan_deploy(Deployment(name="ep1", model=model_a, trust=TRUSTED))
    ).details["deployment"]
    plan = provider.plan_deploy(
        Deployment(
            name="ep1",
            model=str(_model(tmp_path, "b")),
            traffic={"new": 20, blue: 80},
            trust=TRUSTED,
        )
    )
    green = _new(plan)
    assert plan.steps[-2].request == {"mirrorTraffic": {green: 10}}
    assert plan.steps[-1].request == {"traffic": {green: 20, blue: 80}, "mirrorTraffic": {}}
    record = provider.deploy(plan)
    mirrored = [
        b["properties"].get("mirrorTraffic") for b in _bodies(azure, "PUT", "/onlineEndpoints/ep1?")
    ]
    assert {green: 10} in mirrored and mirrored[-1] == {}
    assert record.details["deployments"] == {green: 20, blue: 80}
    assert set(azure.fake.deployments("ep1")) == {blue, green}  # the canary keeps both
    # the fake routes each request to the heaviest deployment (blue, 80%)
    assert provider.predict("ep1", {"instances": [1]}) == {"predictions": ["a"]}
    assert sorted(azure.fake.scored[-1]["deployments"]) == sorted([blue, green])
    with pytest.raises(SpecError, match="traffic"):
        provider.plan_deploy(Deployment(name="ep1", model=model_a, traffic={"x": 100}))


def test_status_and_undeploy_are_idempotent(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    provider.deploy(provider.plan_deploy(Deployment(name="ep1", model=str(_model(tmp_path)))))
    assert provider.endpoint_status("ep1").state is EndpointState.READY
    assert [e.name for e in provider.list_endpoints()] == ["ep1"]
    gone = provider.undeploy("ep1")
    assert gone is not None and gone.state is EndpointState.DELETED
    assert azure.fake.deployments("ep1") == {}
    assert provider.list_endpoints() == []
    assert provider.undeploy("ep1") is None  # again: nothing to do, no error


def test_refused_at_plan_time(provider: Any, store: Store, tmp_path: Path) -> None:
    model = str(_model(tmp_path))
    with pytest.raises(UnsupportedFeature, match="autoscaling") as err:
        provider.plan_deploy(Deployment(name="ep1", model=model, replicas={"min": 1, "max": 3}))
    assert "az monitor autoscale" in str(err.value.hint)
    with pytest.raises(UnsupportedFeature):
        provider.plan_deploy(Deployment(name="ep1", model="s3://b/model"))
    with pytest.raises(SpecError, match="endpoint name"):
        provider.plan_deploy(Deployment(name="1ep", model=model))
    with pytest.raises(SpecError, match="model directory"):
        provider.plan_deploy(Deployment(name="ep1", model=str(tmp_path / "nothing")))
    with pytest.raises(ConfigError, match="serving_image"):
        make_provider(store, serving_image=None).plan_deploy(Deployment(name="ep1", model=model))


def test_registered_model_reference_and_gpu(provider: Any, azure: Installed) -> None:
    plan = provider.plan_deploy(
        Deployment(
            name="ep1", model="azureml:iris:3", resources={"accelerators": "T4:1"}, replicas=2
        )
    )
    assert plan.steps[0].call == "onlineEndpoints.CreateOrUpdate"  # no model upload
    body = plan.steps[1].request
    assert body["properties"]["model"].endswith("/workspaces/ws1/models/iris/versions/3")
    assert body["properties"]["instanceType"] == "Standard_NC4as_T4_v3"
    assert body["sku"]["capacity"] == 2
    record = provider.deploy(plan)
    assert record.model.endswith("/models/iris/versions/3") and record.model_sha256 is None
    sent = _bodies(azure, "PUT", f"/deployments/{_new(plan)}?")[0]
    assert sent["properties"]["model"] == body["properties"]["model"]


def test_a_stale_deploy_plan_is_refused(provider: Any, azure: Installed, tmp_path: Path) -> None:
    """The model directory changed after planning: deploying would send something other than
    what the plan shows, so nothing is sent."""
    model = _model(tmp_path)
    plan = provider.plan_deploy(Deployment(name="ep1", model=str(model)))
    shutil.rmtree(model)
    _model(tmp_path, "b").rename(model)
    with pytest.raises(SpecError, match="stale"):
        provider.deploy(plan)
    assert azure.fake.received == [] and provider.list_endpoints() == []
    assert provider.deploy(provider.plan_deploy(Deployment(name="ep1", model=str(model))))
