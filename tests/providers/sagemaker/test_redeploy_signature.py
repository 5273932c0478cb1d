"""Issue 10, item 14, on SageMaker: re-deploying an endpoint from an ``s3://…/model.tar.gz`` or a
registry ref compares input signatures; the new manifest is streamed out of the tarball in S3
(moto in server mode) at deploy time, with the provider's own client."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcloud import api, modeldir
from mlcloud.cli import main
from mlcloud.errors import SpecError
from providers.common.staging import pack_source
from providers.sagemaker import SageMakerProvider
from tests.providers.sagemaker.conftest import settings
from tests.providers.sagemaker.far_end import Recorder
from tests.providers.sagemaker.moto_server import BUCKET


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str) -> Path:
    path = tmp_path / "mlcloud.yaml"
    profile = {"type": "sagemaker", **settings()}
    path.write_text(yaml.safe_dump({"default": "local", "profiles": {"aws": profile}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(path))
    monkeypatch.delenv("MLCLOUD_PROVIDER", raising=False)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() rebinds it
    return path


def put_model(provider: SageMakerProvider, tmp: Path, key: str, width: int, answer: int) -> str:
    """A model.tar.gz in S3 whose manifest says it takes rows of ``width`` numbers."""
    root = tmp / key.replace("/", "_")
    root.mkdir(parents=True)
    (root / "predictor.py").write_text(
        f"class P:\n    def predict(self, rows):\n        return [{answer}] * len(rows)\n"
    )
    signature = {"inputs": {"shape": [-1, width], "dtype": "float64"}}
    modeldir.write_manifest(root, "custom", {"predictor": "predictor:P"}, signature=signature)
    data = pack_source(root, include_runtime=False).data
    provider.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


def deploy(capsys: pytest.CaptureFixture[str], name: str, uri: str, *more: str) -> tuple[int, str]:
    """``mlcloud deploy`` in-process (the real CLI: exit code, error/hint/warning lines)."""
    capsys.readouterr()
    try:
        main(["deploy", uri, "-n", name, "--provider", "aws", "--trust-code", *more])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def serving_url(provider: SageMakerProvider, name: str) -> str:
    """The ModelDataUrl the endpoint's main variant serves, as SageMaker has it."""
    sm = provider.clients.sagemaker
    config = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    variants = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    variant = max(variants, key=lambda v: v.get("InitialVariantWeight", 1.0))
    url: str = sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["ModelDataUrl"]
    return url


def created_models(far_end: Recorder) -> list[Any]:
    return [body for call, body in far_end.sent() if call == "sagemaker.CreateModel"]


def test_s3_redeploy_checks_the_signature_in_the_tarball(
    config: Path,
    provider: SageMakerProvider,
    far_end: Recorder,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    four = put_model(provider, tmp_path, "jobs/a/output/model.tar.gz", 4, 1)
    three = put_model(provider, tmp_path, "jobs/b/output/model.tar.gz", 3, 2)
    assert deploy(capsys, "sig-s3", four)[0] == 0

    far_end.clear()
    code, err = deploy(capsys, "sig-s3", three)
    assert code == 2, err
    assert "callers would break" in err and "[-1, 4]" in err and "[-1, 3]" in err
    assert "hint:" in err and "--force" in err
    assert created_models(far_end) == [] and serving_url(provider, "sig-s3") == four  # nothing sent

    # The same URI, now holding a model with the same inputs: read again from S3, so allowed.
    put_model(provider, tmp_path / "again", "jobs/b/output/model.tar.gz", 4, 3)
    code, err = deploy(capsys, "sig-s3", three)
    assert code == 0 and "warning" not in err, err
    assert serving_url(provider, "sig-s3") == three
    assert [m["PrimaryContainer"]["ModelDataUrl"] for m in created_models(far_end)] == [three]

    # --force replaces it anyway
    other = put_model(provider, tmp_path, "jobs/c/output/model.tar.gz", 2, 4)
    assert (
        deploy(capsys, "sig-s3", other, "--force")[0] == 0
        and serving_url(provider, "sig-s3") == other
    )


def test_unreadable_model_is_deployed_with_a_warning(
    config: Path, provider: SageMakerProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    four = put_model(provider, tmp_path, "m/a/model.tar.gz", 4, 1)
    assert deploy(capsys, "sig-bad", four)[0] == 0
    # not a tarball at all: no manifest to compare with
    provider.clients.s3.put_object(Bucket=BUCKET, Key="m/b/model.tar.gz", Body=b"not gzip")
    missing = f"s3://{BUCKET}/m/b/model.tar.gz"
    code, err = deploy(capsys, "sig-bad", missing)
    assert code == 0, err
    assert "warning: endpoint 'sig-bad': the input signature was not checked" in err
    assert "cannot read the model manifest" in err


def test_registry_refs_compare_recorded_or_stored_signatures(
    config: Path, provider: SageMakerProvider, tmp_path: Path
) -> None:
    """A registry ref's signature comes from its version record (a local model dir registered,
    since deleted) or, when the record has none (an s3:// URI registered), from S3."""
    four = put_model(provider, tmp_path, "reg/a/model.tar.gz", 4, 1)
    three = put_model(provider, tmp_path, "reg/b/model.tar.gz", 3, 2)
    api.register_model(four, "sig")  # sig:1, a URI: the record has no signature
    api.register_model(three, "sig")  # sig:2
    local = tmp_path / "local"
    local.mkdir()
    (local / "predictor.py").write_text(
        "class P:\n    def predict(self, rows):\n        return rows\n"
    )
    modeldir.write_manifest(
        local, "custom", {"predictor": "predictor:P"},
        signature={"inputs": {"shape": [-1, 4], "dtype": "float64"}},
    )  # fmt: skip
    version = api.register_model(str(local), "sig")  # sig:3, with the signature recorded
    assert version.details["signature"]["inputs"]["shape"] == [-1, 4]
    shutil.rmtree(local)  # the record still knows
    store = provider.store
    api.check_same_inputs("ep", "sig:1", "sig:3", provider, store)  # S3 vs the record: same
    with pytest.raises(SpecError, match="callers would break") as err:
        api.check_same_inputs("ep", "sig:3", "sig:2", provider, store)
    assert err.value.hint is not None and "--force" in err.value.hint
    api.deploy("sig:1", "sig-reg", "aws", trust_code=True)
    with pytest.raises(SpecError, match=r"'shape': \[-1, 4\]\}; the new"):
        api.deploy("sig:2", "sig-reg", "aws", trust_code=True)  # the record says sig:1 serves
    assert serving_url(provider, "sig-reg") == four
