"""metrics.json on SageMaker: the job's train.py runs the plan's container command in a SageMaker
layout (/opt/ml under a temp root), SageMaker's upload of /opt/ml/output/data is played by putting
its output.tar.gz into the moto bucket, and the record collects it on the terminal transition."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import boto3

from mlcloud import tracking
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob, validate_spec
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.job_plan import CODE_DIR, JobContext
from tests.providers.sagemaker.conftest import BUCKET, REGION, set_job_status

TRAIN = """\
from mlcloud import runtime
runtime.log_params({"lr": runtime.hparams()["lr"], "arch": "mlp"})
for step in range(4):
    runtime.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
runtime.log_metrics({"accuracy": 0.93})
(runtime.output_dir() / "plot.bin").write_bytes(b"p" * 100_000)  # other outputs beside it
"""


def _run_in_container(provider: SageMakerProvider, tmp_path: Path) -> tuple[str, Path]:
    """Submit, then run the plan's container command as SageMaker would; returns the job id
    and /opt/ml/output/data."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(TRAIN)
    job = validate_spec(
        TrainingJob,
        {"name": "metrics", "source": str(src), "command": [sys.executable, "train.py"],
         "hyperparameters": {"lr": 0.05}},
        "job",
    )  # fmt: skip
    plan = provider.plan_job(job)
    record = provider.submit_job(plan)
    req = plan.steps[0].request
    ml = tmp_path / "root" / "opt" / "ml"
    code = ml / "input" / "data" / "mlcloud_code"
    code.mkdir(parents=True)
    archive = plan.context_as(JobContext).archive
    (code / f"{archive.sha256}.tar.gz").write_bytes(archive.data)
    config = ml / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(req["HyperParameters"]))
    (ml / "model").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        **req["Environment"],
        "MLCLOUD_FS_ROOT": str(tmp_path / "root"),
        "MLCLOUD_WORKDIR": str(tmp_path / "work"),
    }
    args = req["AlgorithmSpecification"]["ContainerArguments"]
    argv = [sys.executable] + [str(code) if a == CODE_DIR else a for a in args]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return record.id, ml / "output" / "data"


def _upload_output(native: str, data_dir: Path) -> str:
    """SageMaker's end of job: /opt/ml/output/data → <S3OutputPath>/<job>/output/output.tar.gz."""
    s3 = boto3.client("s3", region_name=REGION)
    sm = boto3.client("sagemaker", region_name=REGION)
    base = sm.describe_training_job(TrainingJobName=native)["OutputDataConfig"]["S3OutputPath"]
    bucket, _, prefix = base.removeprefix("s3://").partition("/")
    key = f"{prefix.rstrip('/')}/{native}/output/output.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(data_dir.iterdir()):
            archive.add(path, arcname=path.name)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"


def test_metrics_collected_from_output_archive(provider: SageMakerProvider, tmp_path: Path) -> None:
    job_id, data_dir = _run_in_container(provider, tmp_path)
    record = provider.store.get_job(job_id)
    assert provider.job_status(job_id).details.get("tracking") is None  # still running
    uri = _upload_output(str(record.native_id), data_dir)
    assert uri.startswith(f"s3://{BUCKET}/")
    set_job_status(str(record.native_id), "Completed", "Completed")
    done = provider.job_status(job_id)
    assert done.state is JobState.SUCCEEDED
    assert done.outputs["metrics"] == f"{uri}#metrics.json"
    assert tracking.job_metrics(done) == {
        "params": {"lr": 0.05, "arch": "mlp"}, "metrics": {"loss": 0.25, "accuracy": 0.93}
    }  # fmt: skip
    assert done.details["tracking"]["metrics"]["loss"]["count"] == 4
    assert provider.store.get_job(job_id).details["tracking"] == done.details["tracking"]


def test_failed_job_without_output_has_no_metrics(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("raise SystemExit(1)\n")
    job = TrainingJob(name="nothing", source=str(src), command=["python", "train.py"])
    record = provider.submit_job(provider.plan_job(job))
    set_job_status(str(record.native_id), "Failed", "Failed", failure="AlgorithmError: exit 1")
    failed = provider.job_status(record.id)
    assert failed.state is JobState.FAILED
    assert tracking.job_metrics(failed) == {"params": {}, "metrics": {}}
    assert tracking.tracking_note(failed) is None and "metrics" not in failed.outputs
