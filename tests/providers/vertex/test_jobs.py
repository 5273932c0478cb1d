"""CustomJob lifecycle through the real JobServiceClient (REST) against the fake."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from google.cloud import aiplatform_v1

from mlcloud.errors import NotFoundLocally, ProviderUnavailable, Transient
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob, load_job
from providers.vertex import VertexProvider, states
from providers.vertex.job_plan import VertexJobContext
from tests.fakes.vertex import FakeVertex

ROOT = Path(__file__).resolve().parents[3]
FAILED_MESSAGE = "The replica workerpool0-0 exited with a non-zero status of 3. To find out more"


def _job(tmp_path: Path, **fields: object) -> TrainingJob:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "train.py").write_text("print('hi')\n")
    base = {"name": "t", "source": str(src), "command": ["python", "train.py"], "image": "img"}
    return TrainingJob.model_validate({**base, **fields})


def test_custom_job_as_received(provider: VertexProvider, fake: FakeVertex) -> None:
    plan = provider.plan_job(load_job(ROOT / "examples" / "ddp" / "job.yaml"))
    record = provider.submit_job(plan)
    (received,) = fake.vertex.calls("JobService.CreateCustomJob")
    # the fake parsed the URL and body into aiplatform_v1.CreateCustomJobRequest: what arrived
    # is what was planned
    assert received == plan.steps[0].request
    job = fake.vertex.jobs[record.native_id]
    assert len(job.job_spec.worker_pool_specs) == 2
    assert job.job_spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT
    assert job.job_spec.scheduling.timeout.seconds == 7200
    assert job.job_spec.scheduling.restart_job_on_worker_restart
    assert job.labels["mlcloud-job-id"] == record.id
    assert record.state is JobState.PENDING
    assert record.outputs["model_dir"] == f"{plan.context_as(VertexJobContext).base_output}/model"
    assert provider.store.get_job(record.id).native_id == record.native_id


def test_staging_uploads_only_what_is_missing(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("1,2\n" * 100)
    job = _job(tmp_path, inputs={"train": str(data)})
    first = provider.submit_job(provider.plan_job(job))
    sent = fake.storage.uploaded_bytes
    assert first.details["staged_bytes"] == sent > 400
    archive_key = next(k for b, k in fake.storage.blobs if k.endswith(".tar.gz"))
    assert archive_key.startswith("mlcloud/code/")
    assert any(k.endswith("/a.csv") for _, k in fake.storage.blobs)
    again = provider.submit_job(provider.plan_job(job))
    assert again.details["staged_bytes"] == 0
    assert fake.storage.uploaded_bytes == sent, "0 bytes re-uploaded when unchanged"
    (data / "a.csv").write_text("changed\n")
    third = provider.submit_job(provider.plan_job(job))
    assert 0 < third.details["staged_bytes"] < sent  # the data changed, the code did not
    env = {
        e["name"]: e["value"]
        for e in fake.vertex.calls("JobService.CreateCustomJob")[-1]["customJob"]["jobSpec"][
            "workerPoolSpecs"
        ][0]["containerSpec"]["env"]
    }
    blob_key = env["MLCLOUD_INPUT_TRAIN"].removeprefix("gs://mlcloud-staging/") + "/a.csv"
    assert fake.storage.blobs[("mlcloud-staging", blob_key)].data == b"changed\n"


@pytest.mark.parametrize(
    ("vertex_state", "expected"),
    [
        ("JOB_STATE_QUEUED", JobState.PENDING),
        ("JOB_STATE_PENDING", JobState.PENDING),
        ("JOB_STATE_RUNNING", JobState.RUNNING),
        ("JOB_STATE_SUCCEEDED", JobState.SUCCEEDED),
        ("JOB_STATE_FAILED", JobState.FAILED),
        ("JOB_STATE_CANCELLED", JobState.CANCELLED),
        ("JOB_STATE_EXPIRED", JobState.FAILED),
    ],
)
def test_state_mapping(
    provider: VertexProvider,
    fake: FakeVertex,
    tmp_path: Path,
    vertex_state: str,
    expected: JobState,
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    fake.vertex.set_job_state(record.native_id, vertex_state)
    assert provider.job_status(record.id).state is expected


def test_every_vertex_state_is_mapped() -> None:
    from google.cloud import aiplatform_v1

    assert set(aiplatform_v1.JobState.__members__) == set(states.JOB_STATES)


def test_failure_message_and_exit_code(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    fake.vertex.set_job_state(record.native_id, "JOB_STATE_FAILED", FAILED_MESSAGE)
    final = provider.job_status(record.id)
    assert final.state is JobState.FAILED and final.exit_code == 3
    assert "non-zero status" in (final.message or "")
    assert [e["state"] for e in provider.store.job_events(record.id)][-1] == "FAILED"


def test_cancel_goes_through_cancelling(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    fake.vertex.set_job_state(record.native_id, "JOB_STATE_RUNNING")
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    cancels = [p for m, p in fake.server.log if p.endswith(":cancel")]
    assert len(cancels) == 1
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert len([p for m, p in fake.server.log if p.endswith(":cancel")]) == 1


def test_cancel_race_with_finish_is_not_an_error(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    fake.vertex.set_job_state(record.native_id, "JOB_STATE_RUNNING")
    # the job ends between our status check and the cancel call: Vertex says FAILED_PRECONDITION
    fake.inject(
        "POST",
        r":cancel$",
        "FAILED_PRECONDITION",
        "job already finished",
        then=lambda: fake.vertex.set_job_state(record.native_id, "JOB_STATE_SUCCEEDED"),
    )
    assert provider.cancel_job(record.id).state is JobState.SUCCEEDED


def test_logs_and_follow(provider: VertexProvider, fake: FakeVertex, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    other = provider.submit_job(provider.plan_job(_job(tmp_path)))
    fake.vertex.add_log(record.native_id, "epoch 1", "epoch 2")
    fake.vertex.add_log(other.native_id, "not mine")
    assert list(provider.job_logs(record.id)) == ["epoch 1", "epoch 2"]
    fake.vertex.set_job_state(record.native_id, "JOB_STATE_RUNNING")
    lines = []
    for line in provider.job_logs(record.id, follow=True):
        lines.append(line)
        if line == "epoch 2":
            fake.vertex.add_log(record.native_id, "done")
            fake.vertex.set_job_state(record.native_id, "JOB_STATE_SUCCEEDED")
    assert lines == ["epoch 1", "epoch 2", "done"]
    (req,) = [p for m, p in fake.server.log if p == "/v2/entries:list"][:1]
    assert req


def test_lost_create_response_does_not_duplicate(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    # the job is created but the response is lost: the provider finds it by label, no retry
    fake.inject("POST", r"/customJobs$", "UNAVAILABLE", "connection reset", after_handling=True)
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    assert len(fake.vertex.jobs) == 1
    assert record.native_id in fake.vertex.jobs
    assert len(fake.vertex.calls("JobService.CreateCustomJob")) == 1


def test_create_retried_when_nothing_was_created(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    fake.inject("POST", r"/customJobs$", "UNAVAILABLE", "try again")
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    assert len(fake.vertex.jobs) == 1 and record.native_id in fake.vertex.jobs


def test_reads_are_retried_bounded(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    fake.inject("GET", r"/customJobs/\d+$", "UNAVAILABLE", times=2)
    assert provider.job_status(record.id).state is JobState.PENDING
    creates_before = len(fake.vertex.calls("JobService.CreateCustomJob"))
    fake.inject("POST", r"/customJobs$", "UNAVAILABLE", times=10)
    fake.inject("GET", r"/customJobs$", "UNAVAILABLE", times=1000)  # listing keeps failing too
    with pytest.raises(Transient):
        provider.submit_job(provider.plan_job(_job(tmp_path)))
    assert len(fake.vertex.calls("JobService.CreateCustomJob")) == creates_before


def test_unknown_job(provider: VertexProvider) -> None:
    with pytest.raises(NotFoundLocally):
        provider.job_status("nope-000000")


def test_fake_rejects_unknown_fields(fake: FakeVertex) -> None:
    import requests

    url = f"{fake.url}/v1/projects/p/locations/l/customJobs"
    resp = requests.post(url, data=json.dumps({"displayName": "x", "bogus": 1}), timeout=10)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "bogus" in error["message"]
    assert error["code"] == 400


def test_logs_without_google_cloud_logging(
    provider: VertexProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    monkeypatch.setitem(sys.modules, "google.cloud.logging_v2.client", None)
    with pytest.raises(ProviderUnavailable) as err:
        list(provider.job_logs(record.id))
    assert "google-cloud-logging" in (err.value.hint or "")


def test_concurrent_identical_upload_is_harmless(
    provider: VertexProvider, fake: FakeVertex
) -> None:
    from providers.vertex import gcs

    assert gcs.put_if_absent(provider, "mlcloud/code/k.tar.gz", b"abc") == 3
    # another client uploaded it between our existence check and our create-only upload
    fake.inject("GET", r"/o/mlcloud/code/k\.tar\.gz$", "NOT_FOUND")
    assert gcs.put_if_absent(provider, "mlcloud/code/k.tar.gz", b"abc") == 0
    assert fake.storage.uploads == 1
