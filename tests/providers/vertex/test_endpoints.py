"""Deploy -> predict -> canary -> promote -> undeploy through the real Model/Endpoint/Prediction
clients (REST, long-running operations polled under /ui/) against the fake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.errors import ConfigError, NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import EndpointState
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.vertex import VertexProvider
from tests.conformance.endpoints import TRUSTED
from tests.fakes.vertex import FakeVertex
from tests.providers.vertex.conftest import BUCKET, SERVING_IMAGE, settings_for

PREDICTOR = """import json, pathlib


class Scale:
    def __init__(self, root):
        self.scale = json.loads((pathlib.Path(root) / "model.json").read_text())["scale"]

    def predict(self, rows):
        return [[x * self.scale for x in row] for row in rows]
"""


def model_dir(tmp_path: Path, scale: float) -> str:
    """A custom-framework model dir; the fake serves it with mlcloud's own loader."""
    src = tmp_path / f"src-{scale}"
    src.mkdir()
    (src / "model.json").write_text(json.dumps({"scale": scale}))
    (src / "scale_predictor.py").write_text(PREDICTOR)
    return str(
        modeldir.save(src, "custom", tmp_path / f"model-{scale}", predictor="scale_predictor:Scale")
    )


def calls(plan: Any) -> list[str]:
    return [s.call for s in plan.steps]


def test_deploy_predict_canary_promote_undeploy(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    v1 = Deployment(
        name="iris", model=model_dir(tmp_path, 2.0), replicas={"min": 1, "max": 3}, trust=TRUSTED
    )
    plan = provider.plan_deploy(v1)
    assert calls(plan) == [
        "ModelService.UploadModel",
        "EndpointService.CreateEndpoint",
        "EndpointService.DeployModel",
    ]
    record = provider.deploy(plan)
    assert record.state is EndpointState.READY
    assert record.native_id == "projects/mlcloud-test/locations/us-central1/endpoints/iris"
    # what the fake received, parsed as aiplatform_v1 messages
    (upload,) = fake.vertex.calls("ModelService.UploadModel")
    assert upload["modelId"] == "iris"
    container = upload["model"]["containerSpec"]
    assert container["imageUri"] == SERVING_IMAGE
    assert {"name": "MLCLOUD_SERVING_CONTRACT", "value": "vertex"} in container["env"]
    assert container["predictRoute"] == "/predict" and container["healthRoute"] == "/health"
    assert upload["model"]["artifactUri"].startswith(f"gs://{BUCKET}/mlcloud/models/")
    (deploy,) = fake.vertex.calls("EndpointService.DeployModel")
    resources = deploy["deployedModel"]["dedicatedResources"]
    assert (resources["minReplicaCount"], resources["maxReplicaCount"]) == (1, 3)
    assert deploy["trafficSplit"] == {"0": 100}
    assert any(p.startswith("/ui/") and "/operations/" in p for _, p in fake.server.log)

    out = provider.predict("iris", {"instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert out["predictions"] == [[2.0, 4.0], [6.0, 8.0]]
    assert out["model_version_id"] == "1"

    # canary: v2 beside v1 with 20% of the traffic
    v2 = Deployment(
        name="iris",
        model=model_dir(tmp_path, 3.0),
        traffic={"new": 20, "previous": 80},
        trust=TRUSTED,
    )
    plan = provider.plan_deploy(v2)
    assert calls(plan) == ["ModelService.UploadModel", "EndpointService.DeployModel"]
    assert plan.steps[0].request["parentModel"].endswith("/models/iris")
    record = provider.deploy(plan)
    assert sorted(record.details["traffic"].values()) == [20, 80]
    seen = {provider.predict("iris", [[1.0]])["predictions"][0][0] for _ in range(40)}
    assert seen == {2.0, 3.0}, "both versions serve"

    # promote a v3: all traffic to it, both older versions undeployed
    v3 = Deployment(name="iris", model=model_dir(tmp_path, 4.0), trust=TRUSTED)
    plan = provider.plan_deploy(v3)
    assert calls(plan) == [
        "ModelService.UploadModel",
        "EndpointService.DeployModel",
        "EndpointService.UndeployModel",
        "EndpointService.UndeployModel",
    ]
    record = provider.deploy(plan)
    assert list(record.details["traffic"].values()) == [100]
    assert len(record.details["deployed_models"]) == 1
    assert provider.predict("iris", [[1.0]])["predictions"] == [[4.0]]
    versions = fake.vertex.models["projects/mlcloud-test/locations/us-central1/models/iris"]
    assert [m.version_id for m in versions] == ["1", "2", "3"]
    assert [m["version"] for m in provider.store.list_models("iris")] == [1, 2, 3]

    # the same model again: nothing to send
    assert provider.plan_deploy(v3).steps == ()
    assert provider.deploy(provider.plan_deploy(v3)).state is EndpointState.READY
    assert provider.endpoint_status("iris").state is EndpointState.READY
    assert [e.name for e in provider.list_endpoints()] == ["iris"]

    gone = provider.undeploy("iris")
    assert gone is not None and gone.state is EndpointState.DELETED
    assert fake.vertex.endpoints == {}
    assert provider.undeploy("iris") is None, "undeploy is idempotent"
    with pytest.raises(NotFoundLocally):
        provider.endpoint_status("iris")


def test_upload_is_content_addressed(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    path = model_dir(tmp_path, 2.0)
    provider.deploy(provider.plan_deploy(Deployment(name="a", model=path)))
    sent = fake.storage.uploaded_bytes
    provider.deploy(provider.plan_deploy(Deployment(name="b", model=path)))
    assert fake.storage.uploaded_bytes == sent, "the same model dir is not uploaded twice"


def test_gs_model_and_unknown_model_in_registry(
    fake: FakeVertex, home: Path, tmp_path: Path
) -> None:
    store = Store.open()
    provider = VertexProvider(Profile("g", "vertex", settings_for(fake.url)), store)
    uri = f"gs://{BUCKET}/somewhere/model"
    provider.deploy(provider.plan_deploy(Deployment(name="m", model=uri)))
    assert fake.storage.uploads == 0
    assert fake.vertex.calls("ModelService.UploadModel")[0]["model"]["artifactUri"] == uri
    provider.undeploy("m")
    # another machine (empty store) deploys to the same name: the model exists in Vertex
    other = VertexProvider(
        Profile("g", "vertex", settings_for(fake.url)), Store.open(tmp_path / "other")
    )
    other.deploy(other.plan_deploy(Deployment(name="m", model=f"{uri}-v2")))
    assert len(fake.vertex.models["projects/mlcloud-test/locations/us-central1/models/m"]) == 2
    other.store.close()
    store.close()


def test_deploy_errors(provider: VertexProvider, fake: FakeVertex, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature, match="target"):
        provider.plan_deploy(
            Deployment(name="x", model=model_dir(tmp_path, 1.0), replicas={"max": 2, "target": 5})
        )
    with pytest.raises(SpecError, match="model"):
        provider.plan_deploy(Deployment(name="x", model=str(tmp_path)))
    with pytest.raises(SpecError, match="traffic"):
        provider.plan_deploy(
            Deployment(name="x", model=model_dir(tmp_path, 5.0), traffic={"blue": 100})
        )
    no_image = {**settings_for(fake.url), "serving_image": None}
    bare = VertexProvider(Profile("g", "vertex", no_image), provider.store)
    with pytest.raises(ConfigError, match="serving_image"):
        bare.plan_deploy(Deployment(name="x", model=f"gs://{BUCKET}/m"))


def test_endpoint_deleted_outside_mlcloud(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    provider.deploy(provider.plan_deploy(Deployment(name="gone", model=model_dir(tmp_path, 1.0))))
    fake.vertex.endpoints.clear()  # someone deleted it in the console
    record = provider.endpoint_status("gone")
    assert record.state is EndpointState.DELETED and "no longer exists" in (record.message or "")
    assert provider.undeploy("gone") is not None
    assert provider.list_endpoints() == []
