"""The SageMaker Model Registry kept in step with mlcloud's registry, against the moto server.

moto 5.2 leaves out two behaviours of SageMaker this file needs, added to the in-process server
for this module only (the same way conftest adds UpdateEndpoint):

* tags on a model package *version*: moto's AddTags/ListTags/DeleteTags resolve ARNs by
  ``<type>/<name>`` and know no ``model-package/<group>/<n>``; here they find the package.
* CreateModelPackageGroup on an existing name: moto replaces the group; SageMaker refuses it
  (ValidationException "... already exists"), which is what mlcloud treats as success.

Every write is checked where it landed: what the server read off the socket (``far_end``) and
the state moto's backend now holds. Changes "behind mlcloud's back" are made with the test's own
boto3 client (no "mlcloud" user agent) or in the backend itself.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.records import ModelVersionRecord, jsonable
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.registry_plan import RegisterContext, group_name
from tests.providers.sagemaker.conftest import BUCKET, REGION, backend
from tests.providers.sagemaker.far_end import Recorder
from tests.providers.sagemaker.test_endpoints import model_dir

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "sagemaker" / "register.json"


@pytest.fixture(scope="module", autouse=True)
def moto_like_sagemaker(moto_url: str) -> Iterator[None]:
    from moto.sagemaker import models as sm_models
    from moto.sagemaker.exceptions import ValidationError

    backend_cls = sm_models.SageMakerModelBackend
    by_arn = backend_cls._get_resource_from_arn
    create_group = backend_cls.create_model_package_group

    def resource_from_arn(self: Any, arn: str) -> Any:
        if ":model-package/" in arn and arn in self.model_packages:
            package = self.model_packages[arn]
            if package.tags is None:
                package.tags = []
            return package
        return by_arn(self, arn)

    def create_model_package_group(self: Any, model_package_group_name: str, **kw: Any) -> str:
        if model_package_group_name in self.model_package_groups:
            arn = self.model_package_groups[model_package_group_name].arn
            raise ValidationError(message=f"Model Package Group already exists: {arn}")
        return str(create_group(self, model_package_group_name, **kw))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backend_cls, "_get_resource_from_arn", resource_from_arn)
        mp.setattr(backend_cls, "create_model_package_group", create_model_package_group)
        yield


def _version(root: Path, name: str, number: int) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=name, version=number, uri=str(root), sha256=modeldir.digest(root), provider="aws"
    )


def _registered(provider: SageMakerProvider, version: ModelVersionRecord) -> ModelVersionRecord:
    plan = provider.plan_register(version)
    assert plan is not None
    version.details["native"] = provider.register(plan)
    return version


def _package(arn: str) -> Any:
    return backend().model_packages[arn]


def _alias_tags(arn: str) -> dict[str, str]:
    tags = _package(arn).tags or []
    return {t["Key"]: t["Value"] for t in tags if t["Key"].startswith("mlcloud:alias:")}


def _outside_client(moto_url: str) -> Any:
    import boto3

    return boto3.client(
        "sagemaker",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_register_sends_the_plan(
    provider: SageMakerProvider, far_end: Recorder, tmp_path: Path
) -> None:
    import botocore.session
    from botocore.validate import validate_parameters

    version = _version(model_dir(tmp_path / "m"), "reg-iris", 1)
    plan = provider.plan_register(version)
    assert plan is not None and plan.kind == "register" and plan.id == "reg-iris:1"
    model = botocore.session.get_session().get_service_model("sagemaker")
    for step in plan.steps:  # the real service model's shapes, not moto's leniency
        validate_parameters(
            step.request, model.operation_model(step.call.split(".")[1]).input_shape
        )
    assert far_end.sent() == []  # planning is pure

    native = provider.register(plan)
    assert far_end.sent() == [(s.call, jsonable(s.request)) for s in plan.steps]
    package = _package(native["model_package_arn"])
    assert package.model_package_group_name == "reg-iris" and package.model_package_version == 1
    assert package.model_approval_status == "PendingManualApproval"
    ctx = plan.context_as(RegisterContext)
    (container,) = package.inference_specification["Containers"]
    assert container["ModelDataUrl"] == ctx.model_url == native["model_data_url"]
    assert container["Image"] == provider.settings.serving_image
    key = ctx.model_url.removeprefix(f"s3://{BUCKET}/")
    assert provider.clients.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] > 0
    assert package.customer_metadata_properties["mlcloud:sha256"] == version.sha256

    # the next version: the group exists (SageMaker says so), the package is version 2
    far_end.clear()
    second = _version(model_dir(tmp_path / "m2", "2"), "reg-iris", 2)
    plan2 = provider.plan_register(second)
    assert plan2 is not None
    assert provider.register(plan2)["model_package_version"] == 2
    assert far_end.sent() == [(s.call, jsonable(s.request)) for s in plan2.steps]


def test_golden_register_plan(provider: SageMakerProvider, tmp_path: Path) -> None:
    plan = provider.plan_register(_version(model_dir(tmp_path / "iris"), "iris", 3))
    assert plan is not None
    ctx = plan.context_as(RegisterContext)
    assert ctx.archive is not None
    token = plan.steps[1].request["ClientToken"]
    text = plan.to_json().replace(ctx.archive.sha256, "<model-sha256>").replace(token, "<token>")
    _golden(json.dumps(json.loads(text), indent=2) + "\n")


def _golden(text: str) -> None:
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), f"no golden file {GOLDEN}: run with MLCLOUD_UPDATE_GOLDEN=1"
    expected = GOLDEN.read_text()
    if text != expected:
        diff = difflib.unified_diff(expected.splitlines(True), text.splitlines(True))
        pytest.fail("register plan changed (MLCLOUD_UPDATE_GOLDEN=1 to accept):\n" + "".join(diff))


def test_alias_moves_change_approval_and_tags(
    provider: SageMakerProvider, far_end: Recorder, tmp_path: Path
) -> None:
    v1 = _registered(provider, _version(model_dir(tmp_path / "a"), "reg-alias", 1))
    v2 = _registered(provider, _version(model_dir(tmp_path / "b", "2"), "reg-alias", 2))
    arn1, arn2 = (v.details["native"]["model_package_arn"] for v in (v1, v2))

    assert provider.sync_aliases(v1, ["champion"]) == []
    assert provider.sync_aliases(v2, ["challenger"]) == []
    assert _package(arn1).model_approval_status == "Approved"
    assert _package(arn2).model_approval_status == "PendingManualApproval"
    assert _alias_tags(arn2) == {"mlcloud:alias:challenger": "2"} and _alias_tags(arn1) == {}

    # champion moves to v2: v2 Approved (challenger kept as a tag), v1 Rejected
    far_end.clear()
    assert provider.sync_aliases(v2, ["champion", "challenger"]) == []
    assert provider.sync_aliases(v1, []) == []
    assert _package(arn2).model_approval_status == "Approved"
    assert _package(arn1).model_approval_status == "Rejected"
    assert "champion moved away" in _package(arn1).approval_description
    sent = [call for call, _ in far_end.sent()]
    assert sent == ["sagemaker.UpdateModelPackage", "sagemaker.UpdateModelPackage"]
    assert provider.native_drift(v1, []) == provider.native_drift(v2, ["challenger", "champion"])
    assert provider.native_drift(v2, ["champion", "challenger"]) == []

    # challenger dropped from v2: its tag goes
    assert provider.sync_aliases(v2, ["champion"]) == []
    assert _alias_tags(arn2) == {}
    # an alias mlcloud moved but did not sync yet is a difference too, not "outside"
    lines = provider.native_drift(v2, ["champion", "staging"])
    assert lines[0].startswith("tag mlcloud:alias:staging: SageMaker has nothing")
    assert "not applied yet" in lines[-1]


def test_changes_behind_mlclouds_back_are_drift_not_overwritten(
    provider: SageMakerProvider, far_end: Recorder, tmp_path: Path, moto_url: str
) -> None:
    v1 = _registered(provider, _version(model_dir(tmp_path / "a"), "reg-drift", 1))
    arn = v1.details["native"]["model_package_arn"]
    assert provider.sync_aliases(v1, ["staging"]) == []
    assert provider.native_drift(v1, ["staging"]) == []

    outside = _outside_client(moto_url)  # someone approves it in the console and retags it
    meta = _package(arn).customer_metadata_properties
    outside.update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus="Approved", CustomerMetadataProperties=meta
    )
    outside.add_tags(ResourceArn=arn, Tags=[{"Key": "mlcloud:alias:prod", "Value": "1"}])

    drift = provider.native_drift(v1, ["staging"])
    assert "approval status: SageMaker has 'Approved', mlcloud's registry says 'Rejected'" in drift
    assert any(line.startswith("tag mlcloud:alias:prod: SageMaker has '1'") for line in drift)
    assert drift[-1].startswith("changed outside mlcloud")

    far_end.clear()
    left = provider.sync_aliases(v1, ["staging", "canary"])  # an alias move in mlcloud
    assert left and left[-1].startswith("changed outside mlcloud")
    assert far_end.sent() == []  # nothing written
    assert _package(arn).model_approval_status == "Approved"
    assert _alias_tags(arn) == {"mlcloud:alias:staging": "1", "mlcloud:alias:prod": "1"}

    # the model data replaced behind mlcloud's back, then the package deleted
    spec = _package(arn).inference_specification
    spec["Containers"][0]["ModelDataUrl"] = f"s3://{BUCKET}/elsewhere/model.tar.gz"
    assert any(
        line.startswith("model data: SageMaker serves 's3://mlcloud-test/elsewhere")
        for line in provider.native_drift(v1, ["staging"])
    )
    del backend().model_packages[arn]
    assert provider.native_drift(v1, ["staging"]) == [
        f"model package {arn} no longer exists in SageMaker"
    ]
    assert provider.sync_aliases(v1, ["staging"]) == provider.native_drift(v1, ["staging"])


def test_group_names_sagemaker_accepts() -> None:
    assert group_name("iris") == "iris"
    assert group_name("iris_v2").startswith("iris-v2-") and group_name("iris_v2") != "iris-v2"


def test_through_the_registry_sdk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str, moto_url: str
) -> None:
    """REG's ``mlcloud.api`` on a sagemaker profile: register creates the package, an alias
    move changes the approval status, an outside change shows as drift in ``model()``."""
    import yaml

    from mlcloud import api
    from tests.providers.sagemaker.conftest import settings

    config = tmp_path / "mlcloud.yaml"
    profiles = {"aws": {"type": "sagemaker", **settings()}}
    config.write_text(yaml.safe_dump({"default": "local", "profiles": profiles}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))

    v1 = api.register_model(str(model_dir(tmp_path / "a")), "reg-e2e", provider="aws")
    v2 = api.register_model(
        str(model_dir(tmp_path / "b", "2")), "reg-e2e", provider="aws", alias="champion"
    )
    arn1, arn2 = (v.details["native"]["model_package_arn"] for v in (v1, v2))
    assert _package(arn2).model_approval_status == "Approved"
    assert _package(arn1).model_approval_status == "PendingManualApproval"
    api.move_alias("reg-e2e", "champion", v1.version, reason="rollback drill")
    assert _package(arn1).model_approval_status == "Approved"
    assert _package(arn2).model_approval_status == "Rejected"
    assert api.model("reg-e2e:2")["drift"] == []

    meta = _package(arn2).customer_metadata_properties
    _outside_client(moto_url).update_model_package(
        ModelPackageArn=arn2, ModelApprovalStatus="Approved", CustomerMetadataProperties=meta
    )
    drift = api.model("reg-e2e:2")["drift"]
    assert drift[0] == (
        "approval status: SageMaker has 'Approved', mlcloud's registry says 'Rejected'"
    )


def test_a_cloud_that_cannot_be_reached_leaves_the_move_recorded_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str, moto_url: str
) -> None:
    """The alias history is mlcloud's: SageMaker unreachable during a move is a warning (the
    drift shows in `models show`), never a move half-recorded or a failed command."""
    import socket

    import yaml

    from mlcloud import api
    from mlcloud.model_registry import NativeSyncWarning
    from tests.providers.sagemaker.conftest import settings

    config = tmp_path / "mlcloud.yaml"
    aws = {"type": "sagemaker", **settings(max_attempts=1)}  # no retry back-off to wait out
    config.write_text(yaml.safe_dump({"profiles": {"aws": aws}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    v1 = api.register_model(str(model_dir(tmp_path / "a")), "reg-down", provider="aws")
    api.register_model(str(model_dir(tmp_path / "b", "2")), "reg-down", provider="aws",
                       alias="champion")  # fmt: skip
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed}")
    with pytest.warns(NativeSyncWarning, match="native registry was not updated"):
        move = api.move_alias("reg-down", "champion", v1.version, reason="drill")
    assert (move.from_version, move.to_version) == (2, 1)
    assert api.alias_history("reg-down")[-1] == move
