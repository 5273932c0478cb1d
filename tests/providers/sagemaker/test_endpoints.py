"""Endpoints against moto in server mode: create, predict, autoscaling, blue/green, undeploy."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import EndpointState
from mlcloud.specs import Deployment, validate_spec
from mlcloud.store import Store
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.endpoint_plan import EndpointContext
from tests.providers.sagemaker.conftest import BUCKET, queue_endpoint_results, settings
from tests.providers.sagemaker.test_jobs import Calls


def model_dir(root: Path, version: str = "1") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "predictor.py").write_text(
        f"class P:\n    def predict(self, rows):\n        return [{version}] * len(rows)\n"
    )
    modeldir.write_manifest(root, "custom", {"predictor": "predictor:P"})
    return root


def deployment(model: Path | str, name: str = "iris", **fields: Any) -> Deployment:
    return validate_spec(Deployment, {"name": name, "model": str(model), **fields}, "deployment")


def _models(provider: SageMakerProvider) -> set[str]:
    return {m["ModelName"] for m in provider.clients.sagemaker.list_models()["Models"]}


def _configs(provider: SageMakerProvider) -> set[str]:
    listing = provider.clients.sagemaker.list_endpoint_configs()["EndpointConfigs"]
    return {c["EndpointConfigName"] for c in listing}


def test_deploy_predict_undeploy(provider: SageMakerProvider, tmp_path: Path, aws_env: str) -> None:
    dep = deployment(model_dir(tmp_path / "model"), "ep-basic")
    plan = provider.plan_deploy(dep)
    assert [s.call for s in plan.steps] == [
        "sagemaker.CreateModel",
        "sagemaker.CreateEndpointConfig",
        "sagemaker.CreateEndpoint",
    ]
    record = provider.deploy(plan)
    assert record.state is EndpointState.READY
    assert record.url == (
        "https://runtime.sagemaker.us-east-1.amazonaws.com/endpoints/ep-basic/invocations"
    )
    sm = provider.clients.sagemaker
    desc = sm.describe_endpoint(EndpointName="ep-basic")
    assert desc["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.m5.large" and variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    container = model["PrimaryContainer"]
    assert container["Environment"]["MLCLOUD_SERVING_CONTRACT"] == "sagemaker"
    assert container["Image"] == settings()["serving_image"]
    # The model dir went to S3 as a model.tar.gz with the manifest at its root.
    key = container["ModelDataUrl"].removeprefix(f"s3://{BUCKET}/")
    data = provider.clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {"mlcloud-model.yaml", "predictor.py"} <= set(tar.getnames())
    stored = provider.store.get_endpoint("ep-basic", provider="aws")
    assert stored.state is EndpointState.READY and stored.model_sha256

    rt_calls = Calls(provider.clients.runtime, "sagemaker-runtime")
    queue_endpoint_results(aws_env, [{"predictions": [0, 2]}])
    assert provider.predict("ep-basic", [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]) == {
        "predictions": [0, 2]
    }
    (sent,) = rt_calls.bodies.values()
    assert json.loads(sent[0]) == {"instances": [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]}

    assert provider.endpoint_status("ep-basic").state is EndpointState.READY
    gone = provider.undeploy("ep-basic")
    assert gone is not None and gone.state is EndpointState.DELETED
    assert "ep-basic" not in {e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]}
    assert variant["ModelName"] not in _models(provider)
    assert desc["EndpointConfigName"] not in _configs(provider)
    assert provider.list_endpoints() == []
    assert provider.undeploy("ep-basic") is None  # idempotent


def test_autoscaling_and_blue_green_update(provider: SageMakerProvider, tmp_path: Path) -> None:
    sm = provider.clients.sagemaker
    aas = provider.clients.autoscaling
    replicas = {"min": 1, "max": 4, "target": 50}
    v1 = model_dir(tmp_path / "v1")
    first = provider.deploy(provider.plan_deploy(deployment(v1, "ep-bg", replicas=replicas)))
    rid = f"endpoint/ep-bg/variant/{first.details['newest']}"
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)[
        "ScalingPolicies"
    ]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 50.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == (
        "SageMakerVariantInvocationsPerInstance"
    )
    old_config = first.details["endpoint_config"]
    old_model = first.details["model_name"]

    # Same spec again: nothing changes, nothing new is created.
    again = provider.deploy(provider.plan_deploy(deployment(v1, "ep-bg", replicas=replicas)))
    assert again.details["endpoint_config"] == old_config

    # A new model version: new model + config, UpdateEndpoint, old ones removed afterwards.
    plan = provider.plan_deploy(
        deployment(model_dir(tmp_path / "v2", "2"), "ep-bg", replicas=replicas)
    )
    assert "sagemaker.UpdateEndpoint" in [s.call for s in plan.steps]
    second = provider.deploy(plan)
    assert second.state is EndpointState.READY
    desc = sm.describe_endpoint(EndpointName="ep-bg")
    assert desc["EndpointConfigName"] == second.details["endpoint_config"] != old_config
    assert old_config not in _configs(provider) and old_model not in _models(provider)
    assert second.details["model_name"] in _models(provider)
    # each model version is its own variant: scaling moves to the new one
    assert not aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ], "the old variant's scaling target removed"
    rid = f"endpoint/ep-bg/variant/{second.details['newest']}"
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ], "autoscaling re-registered after the switch"

    provider.undeploy("ep-bg")
    assert not aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])[
        "ScalableTargets"
    ]
    assert second.details["model_name"] not in _models(provider)


def test_registry_records_model_versions(tmp_path: Path, bucket: str) -> None:
    provider = SageMakerProvider(
        Profile("aws", "sagemaker", settings(model_package_group="mlcloud-iris")), Store.open()
    )
    plan = provider.plan_deploy(deployment(model_dir(tmp_path / "m"), "ep-reg"))
    assert "sagemaker.CreateModelPackage" in [s.call for s in plan.steps]
    provider.deploy(plan)
    packages = provider.clients.sagemaker.list_model_packages(ModelPackageGroupName="mlcloud-iris")[
        "ModelPackageSummaryList"
    ]
    assert len(packages) == 1
    (version,) = provider.store.list_models("ep-reg")
    assert version["details"]["model_package_arn"] == packages[0]["ModelPackageArn"]
    assert version["uri"] == plan.context_as(EndpointContext).model_url
    provider.undeploy("ep-reg")


def test_s3_model_and_refusals(provider: SageMakerProvider, tmp_path: Path) -> None:
    plan = provider.plan_deploy(deployment("s3://b/jobs/x/output/model.tar.gz", "ep-s3"))
    assert plan.steps[0].request["PrimaryContainer"]["ModelDataUrl"] == (
        "s3://b/jobs/x/output/model.tar.gz"
    )
    assert plan.context_as(EndpointContext).archive is None
    with pytest.raises(SpecError):
        provider.plan_deploy(deployment("s3://b/some/prefix/", "ep-s3"))
    with pytest.raises(SpecError):
        provider.plan_deploy(deployment(tmp_path / "not-a-model", "ep-x"))
    model = model_dir(tmp_path / "m")
    with pytest.raises(UnsupportedFeature):
        provider.plan_deploy(deployment(model, "ep-x", replicas={"min": 0, "max": 2}))
    with pytest.raises(SpecError):  # a split names the new and the previous version only
        provider.plan_deploy(deployment(model, "ep-x", traffic={"a": 50, "b": 50}))
    with pytest.raises(SpecError):  # a canary needs a version serving already
        provider.plan_deploy(deployment(model, "ep-x", traffic={"new": 10, "previous": 90}))


def test_failed_endpoint_is_not_updated(provider: SageMakerProvider, tmp_path: Path) -> None:
    from mlcloud.errors import Conflict
    from tests.providers.sagemaker.conftest import backend

    model = model_dir(tmp_path / "m")
    provider.deploy(provider.plan_deploy(deployment(model, "ep-failed")))
    backend().endpoints["ep-failed"].endpoint_status = "Failed"
    with pytest.raises(Conflict) as err:
        provider.deploy(
            provider.plan_deploy(deployment(model_dir(tmp_path / "m2", "2"), "ep-failed"))
        )
    assert "undeploy" in (err.value.hint or "")
    assert provider.endpoint_status("ep-failed").state is EndpointState.FAILED
    assert provider.undeploy("ep-failed") is not None
