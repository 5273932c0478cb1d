"""A pipeline whose steps run on different providers (issue 12, item 5): a training step on
SageMaker (moto's real HTTP server; the test plays SageMaker's end of the job: it uploads the
output archive with the job's metrics.json and completes the job), a gate on the metrics the
SageMaker job logged, then a step on the local provider reading the SageMaker model (copied from
S3 by mlcloud). The far end received the plan."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import boto3
import pytest
import yaml

from mlcloud import api
from mlcloud import pipelines as pl
from mlcloud.errors import NotFoundLocally
from tests.pipelines.conftest import STEP_PY
from tests.providers.sagemaker.conftest import (  # noqa: F401 (fixtures: moto's server, AWS env)
    REGION,
    aws_env,
    far_end,
    set_job_status,
    settings,
)
from tests.providers.sagemaker.far_end import Recorder


@pytest.fixture
def project(tmp_path: Path, bucket: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pipeline's directory: beside MLCLOUD_HOME (aws_env puts it in tmp_path), not above
    it: a job's source directory is packed whole, the state database included otherwise."""
    tmp_path = tmp_path / "project"
    tmp_path.mkdir()
    (tmp_path / "step.py").write_text(STEP_PY)
    profiles = {"local": {"type": "local"}, "aws": {"type": "sagemaker", **settings()}}
    config = {"default": "local", "profiles": profiles}
    (tmp_path / "mlcloud.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(tmp_path / "mlcloud.yaml"))
    return tmp_path


def _metrics_archive(tmp_path: Path, accuracy: float) -> bytes:
    """What the job's runtime writes to /opt/ml/output/data, as SageMaker archives it."""
    out = tmp_path / "job-output"
    code = f"from mlcloud import runtime; runtime.log_metrics({{'accuracy': {accuracy!r}}})"
    env = {**os.environ, "MLCLOUD_OUTPUT_DIR": str(out)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(out / "metrics.json", arcname="metrics.json")
    return buffer.getvalue()


def _model_archive() -> bytes:
    """A model directory as SageMaker packs /opt/ml/model: model.tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in (("weights.bin", b"w" * 300_000), ("mlcloud-model.yaml", b"x: 1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def _play_sagemaker(native: str, archive: bytes) -> None:
    sm = boto3.client("sagemaker", region_name=REGION)
    base = sm.describe_training_job(TrainingJobName=native)["OutputDataConfig"]["S3OutputPath"]
    name, _, prefix = base.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket=name, Key=f"{prefix.rstrip('/')}/{native}/output/output.tar.gz",
                  Body=archive)  # fmt: skip
    s3.put_object(Bucket=name, Key=f"{prefix.rstrip('/')}/{native}/output/model.tar.gz",
                  Body=_model_archive())  # fmt: skip
    set_job_status(native, "Completed", "Completed")


CHECK = """\
from mlcloud import runtime
model = runtime.input_dir("model")
assert (model / "weights.bin").stat().st_size == 300_000, sorted(model.iterdir())
print("read the SageMaker model locally", flush=True)
"""


def test_train_on_sagemaker_gate_on_its_metrics_then_run_locally(
    project: Path,
    far_end: Recorder,  # noqa: F811
) -> None:
    data = {
        "name": "hybrid",
        "steps": [
            {"name": "train", "provider": "aws",
             "job": {"name": "train", "command": ["python", "step.py"], "image": "python:3.11"}},
            {"name": "gate", "condition": "train.metrics.accuracy > 0.9"},
            {"name": "after", "job": {"name": "after", "command": ["python", "check.py"]},
             "inputs": {"model": "train.model"}, "needs": ["gate"]},
        ],
    }  # fmt: skip
    (project / "check.py").write_text(CHECK)
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    run = pl.run(path)
    deadline = time.monotonic() + 60
    while True:  # the runner sent the job to SageMaker
        step = {s.step: s for s in pl.get(run.id).steps}["train"]
        try:
            record = api.job(str(step.job_id)).record if step.job_id else None
        except NotFoundLocally:
            record = None
        if record is not None and record.native_id:
            break
        assert time.monotonic() < deadline, pl.describe(pl.get(run.id))
        time.sleep(0.1)
    assert record.provider == "aws" and record.type == "sagemaker"
    sent = [kwargs for call, kwargs in far_end.sent() if call == "sagemaker.CreateTrainingJob"]
    assert [s["TrainingJobName"] for s in sent] == [record.native_id]
    _play_sagemaker(str(record.native_id), _metrics_archive(project, 0.95))
    final = pl.wait(run.id, timeout=90)
    by = {s.step: s for s in final.steps}
    assert final.state == "SUCCEEDED", json.dumps(pl.describe(final), default=str)
    assert by["train"].outputs["metrics"] == {"accuracy": 0.95}
    assert by["train"].outputs["provider"] == "aws"
    assert "train.metrics.accuracy=0.95" in str(by["gate"].message)
    after = api.job(str(by["after"].job_id))
    assert after.record.type == "local"
    assert any("read the SageMaker model locally" in line for line in after.logs())
    # the model was copied from S3 once, into a content-addressed folder
    copies = list((Path(os.environ["MLCLOUD_HOME"]) / "artifacts").iterdir())
    assert len(copies) == 1 and after.record.spec["inputs"]["model"] == str(copies[0])
    assert (copies[0] / "weights.bin").exists()


TRAIN_TINY = """\
from sklearn.linear_model import LogisticRegression
from mlcloud import runtime
model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
runtime.save_model(model, "sklearn", signature={"inputs": {"shape": [-1, 1], "dtype": "float64"}})
"""


def _sklearn_model_archive(tmp_path: Path) -> bytes:
    """A real mlcloud model dir (skops: it runs no code when loaded), as model.tar.gz."""
    root = tmp_path / "sm-model"
    (tmp_path / "train_tiny.py").write_text(TRAIN_TINY)
    env = {**os.environ, "MLCLOUD_MODEL_DIR": str(root)}
    subprocess.run([sys.executable, "train_tiny.py"], cwd=tmp_path, env=env, check=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(root.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def _wait_for_native(run_id: str, step_name: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        step = {s.step: s for s in pl.get(run_id).steps}[step_name]
        try:
            record = api.job(str(step.job_id)).record if step.job_id else None
        except NotFoundLocally:
            record = None
        if record is not None and record.native_id:
            return str(record.native_id)
        assert time.monotonic() < deadline, pl.describe(pl.get(run_id))
        time.sleep(0.1)


def test_train_on_sagemaker_deploy_locally(project: Path) -> None:
    data = {
        "name": "tolocal",
        "steps": [
            {"name": "train", "provider": "aws",
             "job": {"name": "train", "command": ["python", "step.py"], "image": "python:3.11"}},
            {"name": "serve", "deploy": {"model": "train.model", "endpoint": "tolocal"}},
        ],
    }  # fmt: skip
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    run = pl.run(path)
    native = _wait_for_native(run.id, "train")
    archive = _sklearn_model_archive(project)
    sm = boto3.client("sagemaker", region_name=REGION)
    base = sm.describe_training_job(TrainingJobName=native)["OutputDataConfig"]["S3OutputPath"]
    name, _, prefix = base.removeprefix("s3://").partition("/")
    key = f"{prefix.rstrip('/')}/{native}/output/model.tar.gz"
    boto3.client("s3", region_name=REGION).put_object(Bucket=name, Key=key, Body=archive)
    set_job_status(native, "Completed", "Completed")
    try:
        final = pl.wait(run.id, timeout=120)
        assert final.state == "SUCCEEDED", json.dumps(pl.describe(final), default=str)
        endpoint = api.endpoint("tolocal")
        assert endpoint.record.type == "local"
        assert endpoint.record.model and "/artifacts/" in endpoint.record.model  # the S3 copy
        assert endpoint.predict({"instances": [[0.0], [3.0]]})["predictions"] == [0, 1]
    finally:
        with contextlib.suppress(NotFoundLocally):
            api.endpoint("tolocal").undeploy()


def test_train_locally_deploy_on_sagemaker(project: Path, far_end: Recorder) -> None:  # noqa: F811
    (project / "train_tiny.py").write_text(TRAIN_TINY)
    data = {
        "name": "tocloud",
        "steps": [
            {"name": "train", "job": {"name": "tiny", "command": ["python", "train_tiny.py"]}},
            {"name": "serve", "provider": "aws",
             "deploy": {"model": "train.model", "endpoint": "tocloud"}},
        ],
    }  # fmt: skip
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    final = pl.wait(pl.run(path).id, timeout=120)
    assert final.state == "SUCCEEDED", json.dumps(pl.describe(final), default=str)
    record = api.endpoint("tocloud").record
    assert record.type == "sagemaker" and str(record.state) == "READY"
    sent = dict(far_end.sent())
    assert sent["sagemaker.CreateModel"]["PrimaryContainer"]["ModelDataUrl"].startswith("s3://")
    assert "sagemaker.CreateEndpoint" in sent
