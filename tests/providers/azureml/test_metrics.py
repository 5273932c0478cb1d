"""metrics.json on Azure ML: the planned command runs in Azure ML's layout (outputs mounted as
folders), the output mount's files land in the datastore's blob container (what ``rw_mount``
does), and the record collects the blob through the SDK's datastore access (the real
azure-storage-blob client against the fake blob handler) when the job ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlcloud import tracking
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from providers.common.staging import write_source_dir
from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import write_source

TRAIN = """\
from mlcloud import runtime
runtime.log_params({"lr": runtime.hparams()["lr"]})
runtime.log_metrics({"f1": 0.7}, step=1)
runtime.log_metrics({"f1": 0.8}, step=2)
"""
CONTAINER = "azureml-blobstore"  # the fake workspaceblobstore's container


def _run_as_azure_ml(provider: Any, job: TrainingJob, job_id: str, tmp_path: Path) -> Path:
    """The planned command with ``${{outputs.*}}`` mounted as folders; returns the output one."""
    command = str(provider.plan_job(job).steps[0].request["properties"]["command"])
    code = tmp_path / "code"
    write_source_dir(Path(job.source), code)
    for name in ("model", "output"):
        (tmp_path / "mnt" / name).mkdir(parents=True)
        command = command.replace("${{outputs." + name + "}}", str(tmp_path / "mnt" / name))
    env = {
        "PATH": os.environ["PATH"],
        "MLCLOUD_JOB_ID": job_id,
        "MLCLOUD_PROVIDER_TYPE": "azureml",
        "MLCLOUD_HPARAMS": json.dumps(job.hyperparameters),
    }
    done = subprocess.run(
        ["bash", "-c", command.replace("python _mlcloud", f"{sys.executable} _mlcloud", 1)],
        cwd=code, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return tmp_path / "mnt" / "output"


def test_metrics_collected_from_the_datastore(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    source = write_source(tmp_path / "src", TRAIN)
    job = TrainingJob(
        name="metrics",
        source=str(source),
        command=["python", "train.py"],
        framework={"name": "sklearn", "version": "1.5"},
        hyperparameters={"lr": 0.3},
    )
    record = provider.submit_job(provider.plan_job(job))
    output = _run_as_azure_ml(provider, job, record.id, tmp_path)
    for path in output.iterdir():  # rw_mount: the folder's files are blobs of the datastore
        azure.fake.blobs[f"{CONTAINER}/mlcloud/jobs/{record.id}/output/{path.name}"] = (
            path.read_bytes()
        )
    azure.fake.set_job_status(record.native_id, "Running")
    assert provider.job_status(record.id).details.get("tracking") is None
    azure.fake.set_job_status(record.native_id, "Completed")
    done = provider.job_status(record.id)
    assert done.state is JobState.SUCCEEDED
    uri = f"azureml://datastores/workspaceblobstore/paths/mlcloud/jobs/{record.id}/output"
    assert done.outputs["metrics"] == f"{uri}/metrics.json"
    assert tracking.job_metrics(done) == {"params": {"lr": 0.3}, "metrics": {"f1": 0.8}}
    assert done.details["tracking"]["metrics"]["f1"]["step"] == 2


def test_failed_job_without_metrics(provider: Any, azure: Installed, tmp_path: Path) -> None:
    source = write_source(tmp_path / "src", "raise SystemExit(2)\n")
    job = TrainingJob(
        name="nometrics",
        source=str(source),
        command=["python", "train.py"],
        framework={"name": "sklearn", "version": "1.5"},
    )
    record = provider.submit_job(provider.plan_job(job))
    azure.fake.set_job_status(record.native_id, "Failed", "exited with code 2")
    failed = provider.job_status(record.id)
    assert failed.state is JobState.FAILED
    assert tracking.job_metrics(failed) == {"params": {}, "metrics": {}}
    assert tracking.tracking_note(failed) is None
