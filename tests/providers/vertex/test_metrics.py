"""metrics.json on Vertex AI: the job's command runs as on a Vertex node (``run_on_node``: its
writes under the /gcs FUSE mount land in the fake's bucket), then the record collects the object
through the real google-cloud-storage client when the CustomJob ends."""

from __future__ import annotations

import json
from pathlib import Path

from mlcloud import tracking
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from providers.vertex import VertexProvider
from tests.fakes.vertex import FakeVertex
from tests.providers.vertex.conftest import BUCKET, run_on_node

TRAIN = """\
from mlcloud import runtime
runtime.log_params({"lr": runtime.hparams()["lr"], "epochs": 2})
for epoch in range(2):
    runtime.log_metrics({"val_loss": 0.8 - 0.3 * epoch}, step=epoch)
runtime.log_metrics({"auc": 0.91})
"""


def _submit(provider: VertexProvider, tmp_path: Path, script: str) -> str:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(script)
    job = TrainingJob(
        name="metrics",
        source=str(src),
        command=["python", "train.py"],
        image="python:3.11",
        hyperparameters={"lr": 0.01},
    )
    return provider.submit_job(provider.plan_job(job)).id


def test_metrics_collected_from_gcs(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    job_id = _submit(provider, tmp_path, TRAIN)
    record = provider.store.get_job(job_id)
    out = run_on_node(fake, record.native_id or "", tmp_path / "node")
    assert out.returncode == 0, out.stderr
    key = f"mlcloud/jobs/{job_id}/output/metrics.json"
    written = json.loads(fake.storage.blobs[(BUCKET, key)].data)  # what the bucket holds
    assert written["params"] == {"lr": 0.01, "epochs": 2}

    assert provider.job_status(job_id).details.get("tracking") is None  # still running
    fake.vertex.set_job_state(record.native_id, "JOB_STATE_SUCCEEDED")
    done = provider.job_status(job_id)
    assert done.state is JobState.SUCCEEDED
    assert done.outputs["metrics"] == f"gs://{BUCKET}/{key}"
    got = tracking.job_metrics(done)
    assert got["params"] == {"lr": 0.01, "epochs": 2}
    assert got["metrics"]["auc"] == 0.91 and round(got["metrics"]["val_loss"], 6) == 0.5


def test_job_without_metrics_and_unreadable_file(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    job_id = _submit(provider, tmp_path, "print('no metrics')\n")
    native = provider.store.get_job(job_id).native_id or ""
    fake.vertex.set_job_state(native, "JOB_STATE_FAILED")
    failed = provider.job_status(job_id)
    assert failed.state is JobState.FAILED
    assert tracking.job_metrics(failed) == {"params": {}, "metrics": {}}
    assert tracking.tracking_note(failed) is None

    from tests.fakes.vertex.server import Blob

    (tmp_path / "b").mkdir()
    other = _submit(provider, tmp_path / "b", "pass\n")
    fake.storage.blobs[(BUCKET, f"mlcloud/jobs/{other}/output/metrics.json")] = Blob(
        b"{not json", 1, "application/json"
    )
    fake.vertex.set_job_state(provider.store.get_job(other).native_id or "", "JOB_STATE_SUCCEEDED")
    done = provider.job_status(other)
    assert "metrics.json: not JSON" in (tracking.tracking_note(done) or "")
