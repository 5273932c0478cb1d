"""``plan_deploy`` of the Ray provider (pure: no cluster, no network) and its packages."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.errors import ModelError, SpecError, UnsupportedFeature
from mlcloud.provider import Capability
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.ray.endpoint_plan import (
    IMPORT_PATH,
    MAX_ONGOING,
    PUT_APPLICATIONS,
    RayDeployContext,
    code_package,
    model_package,
)
from providers.ray.provider import RayProvider
from tests.conformance.endpoints import make_custom_model

# Nothing listens here: a plan that contacted the cluster would fail.
ADDRESS = "http://127.0.0.1:9"


def _provider(**settings: Any) -> RayProvider:
    conf = {"address": ADDRESS, "token": "t", **settings}
    return RayProvider(Profile("onprem", "ray", conf), Store.open())


@pytest.fixture
def model(tmp_path: Path) -> str:
    return str(make_custom_model(tmp_path, "a"))


def _app(deployment: Deployment, **settings: Any) -> dict[str, Any]:
    plan = _provider(**settings).plan_deploy(deployment)
    assert [s.call for s in plan.steps] == [PUT_APPLICATIONS]
    (app,) = plan.steps[0].request["applications"]
    return dict(app)


def test_the_plan_is_the_serve_config(model: str) -> None:
    provider = _provider()
    plan = provider.plan_deploy(Deployment(name="iris", model=model, env={"A": "1"}))
    request = plan.steps[0].request
    assert request["proxy_location"] == "HeadOnly"
    assert request["http_options"] == {"host": "127.0.0.1", "port": 8000}
    (app,) = request["applications"]
    assert app["name"] == "iris" and app["route_prefix"] == "/iris"
    assert app["import_path"] == IMPORT_PATH
    assert app["args"] == {"model_dir": "model", "max_body": 10 * 1024 * 1024}
    ctx = plan.context_as(RayDeployContext)
    assert app["runtime_env"] == {
        "working_dir": ctx.model_uri,
        "py_modules": [ctx.code.uri],
        "env_vars": {"A": "1"},
    }
    assert app["deployments"] == [
        {
            "name": "mlcloud",
            "num_replicas": 1,
            "max_ongoing_requests": MAX_ONGOING,
            "max_surge_percent": 100,
        }
    ]
    assert ctx.model_sha256 == modeldir.digest(Path(model))
    assert ctx.url == "http://127.0.0.1:8000/iris"  # a remote head's loopback: via its address
    assert provider.list_endpoints() == []
    assert {Capability.ENDPOINTS, Capability.AUTOSCALING} <= provider.capabilities


def test_replicas_become_serve_scaling(model: str) -> None:
    def scaling(replicas: Any) -> dict[str, Any]:
        deployment = _app(Deployment(name="e", model=model, replicas=replicas))["deployments"][0]
        return {k: v for k, v in deployment.items() if k in ("num_replicas", "autoscaling_config")}

    assert scaling(3) == {"num_replicas": 3}
    assert scaling({"min": 2, "max": 2}) == {"num_replicas": 2}
    assert scaling({"min": 1, "max": 4, "target": 5}) == {
        "autoscaling_config": {
            "min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
            "target_ongoing_requests": 5,
        }
    }  # fmt: skip
    assert scaling({"min": 0, "max": 2}) == {
        "autoscaling_config": {"min_replicas": 0, "max_replicas": 2, "initial_replicas": 1}
    }


def test_resources_become_actor_options(model: str) -> None:
    resources = {"cpus": 0.5, "memory": "1Gi", "accelerators": "T4:1"}
    deployment = _app(Deployment(name="e", model=model, resources=resources))["deployments"][0]
    assert deployment["ray_actor_options"] == {
        "num_cpus": 0.5,
        "num_gpus": 1,
        "memory": 2**30,
        "accelerator_type": "T4",
    }


def test_trust_and_body_limit_travel_in_the_runtime_env(model: str) -> None:
    digest = modeldir.digest(Path(model))
    deployment = Deployment(
        name="e",
        model=model,
        trust={"by": "trust-code", "digest": digest},
        env={"MLCLOUD_SERVE_MAX_BODY": "2048"},
    )
    app = _app(deployment)
    assert app["runtime_env"]["env_vars"][modeldir.TRUST_ENV] == digest
    assert app["args"]["max_body"] == 2048


def test_unsupported_and_bad_deployments_fail_at_plan_time(model: str, tmp_path: Path) -> None:
    for extra in ({"traffic": {"a": 50, "b": 50}}, {"port": 9000}, {"host": "0.0.0.0"}):
        with pytest.raises(UnsupportedFeature):
            _app(Deployment(name="e", model=model, **extra))
    with pytest.raises(SpecError, match="model directory from this"):
        _app(Deployment(name="e", model="s3://bucket/model"))
    with pytest.raises(SpecError, match="not an mlcloud model directory"):
        _app(Deployment(name="e", model=str(tmp_path)))


def test_proxy_address(model: str) -> None:
    deployment = Deployment(name="e", model=model)
    for settings, url in (
        ({}, "http://127.0.0.1:8000/e"),
        ({"address": "https://head.example:8265"}, "http://head.example:8000/e"),
        ({"address": "http://head:8265", "serve_host": "0.0.0.0", "serve_port": 80}, "http://head:80/e"),
        ({"address": "http://head:8265", "serve_host": "10.0.0.5"}, "http://10.0.0.5:8000/e"),
    ):  # fmt: skip
        plan = _provider(**settings).plan_deploy(deployment)
        assert plan.context_as(RayDeployContext).url == url, settings


def test_model_package_is_reproducible_and_checked(model: str) -> None:
    ctx = _provider().plan_deploy(Deployment(name="e", model=model)).context_as(RayDeployContext)
    first, second = model_package(model, ctx.model_uri), model_package(model, ctx.model_uri)
    assert first.data == second.data and first.uri == ctx.model_uri
    names = zipfile.ZipFile(io.BytesIO(first.data)).namelist()
    assert names == sorted(names) and all(n.startswith("model/") for n in names)
    assert f"model/{modeldir.MANIFEST}" in names and "model/conformance_predictor.py" in names

    # changed after planning: refused, whether the manifest or a file behind its back
    (Path(model) / "conformance_predictor.py").write_text("print('swapped')\n")
    with pytest.raises(ModelError):
        model_package(model, ctx.model_uri)
    manifest = Path(model) / modeldir.MANIFEST
    manifest.write_text(manifest.read_text() + "\n# edited\n")
    with pytest.raises(ModelError, match="changed since it was planned"):
        model_package(model, ctx.model_uri)


def test_code_package_ships_the_serving_code() -> None:
    first, second = code_package(), code_package()
    assert first == second
    names = set(zipfile.ZipFile(io.BytesIO(first.data)).namelist())
    for needed in (
        "providers/ray/serve_app.py",
        "serving/loaders.py",
        "serving/app.py",
        "serving/inputs.py",
        "mlcloud/modeldir.py",
    ):
        assert needed in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any(n.startswith("providers/local/") for n in names)
