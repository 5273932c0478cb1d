"""Training jobs against moto in server mode: real boto3 serialization over HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mlcloud.errors import NotFound, NotFoundLocally, Transient
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob, load_job, validate_spec
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.job_plan import JobContext
from tests.providers.sagemaker.conftest import BUCKET, REGION, ROLE, seed_logs, set_job_status

REPO = Path(__file__).resolve().parents[3]


def _job(tmp_path: Path, name: str = "demo", **fields: Any) -> TrainingJob:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "train.py").write_text(f"print('{name}')\n")
    data = {"name": name, "source": str(src), "command": ["python", "train.py"], **fields}
    return validate_spec(TrainingJob, data, "job")


class Calls:
    """Counts the real client's calls and keeps the serialized request bodies (botocore events)."""

    def __init__(self, client: Any, service: str) -> None:
        self.counts: dict[str, int] = {}
        self.bodies: dict[str, list[bytes]] = {}
        client.meta.events.register(f"before-send.{service}", self._send)

    def _send(self, request: Any, **_: Any) -> None:
        target = request.headers.get("X-Amz-Target", b"")
        op = (target.decode() if isinstance(target, bytes) else target).rsplit(".", 1)[-1]
        if not op:
            op = request.method + (" upload" if request.method == "PUT" else "")
        self.counts[op] = self.counts.get(op, 0) + 1
        body = request.body if isinstance(request.body, bytes) else b""
        self.bodies.setdefault(op, []).append(body)


def test_submit_stages_code_once_and_resubmit_does_not_duplicate(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    s3_calls = Calls(provider.clients.s3, "s3")
    sm_calls = Calls(provider.clients.sagemaker, "sagemaker")
    job = _job(tmp_path, "stage", inputs={"train": str(tmp_path / "src")})
    first = provider.submit_job(provider.plan_job(job))
    puts_after_first = s3_calls.counts.get("PUT upload", 0)
    assert puts_after_first == 3  # code archive, one input file, the input's .complete marker
    assert first.details["uploaded_bytes"] > 0
    code_uri = first.details["code_uri"]
    key = code_uri.removeprefix(f"s3://{BUCKET}/")
    obj = provider.clients.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    plan = provider.plan_job(job)
    assert obj == plan.context_as(JobContext).archive.data

    again = provider.submit_job(plan)  # unchanged source, same spec
    assert s3_calls.counts.get("PUT upload", 0) == puts_after_first, "re-upload of same content"
    assert again.id == first.id and again.native_id == first.native_id
    assert sm_calls.counts["CreateTrainingJob"] == 1
    assert len([j for j in provider.list_jobs() if j.native_id == first.native_id]) == 1


def test_create_training_job_fields_reach_sagemaker(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    sm_calls = Calls(provider.clients.sagemaker, "sagemaker")
    plan = provider.plan_job(load_job(REPO / "examples/ddp/job.yaml"))
    record = provider.submit_job(plan)
    req = plan.steps[0].request
    desc = provider.clients.sagemaker.describe_training_job(TrainingJobName=record.native_id)
    assert desc["TrainingJobName"] == req["TrainingJobName"] == record.native_id
    assert desc["TrainingJobArn"] == record.details["arn"]
    assert desc["RoleArn"] == ROLE
    algo = desc["AlgorithmSpecification"]
    for key in ("TrainingImage", "TrainingInputMode", "ContainerEntrypoint", "ContainerArguments"):
        assert algo[key] == req["AlgorithmSpecification"][key]
    assert desc["InputDataConfig"] == req["InputDataConfig"]
    assert desc["OutputDataConfig"] == req["OutputDataConfig"]
    assert desc["ResourceConfig"] == req["ResourceConfig"]
    assert desc["StoppingCondition"] == req["StoppingCondition"]
    assert desc["EnableManagedSpotTraining"] is True
    assert desc["CheckpointConfig"] == req["CheckpointConfig"]
    assert desc["HyperParameters"] == req["HyperParameters"]
    tags = provider.clients.sagemaker.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]
    assert {t["Key"]: t["Value"] for t in tags}["mlcloud:job-id"] == record.id
    # moto's DescribeTrainingJob drops Environment and RetryStrategy: check them on the wire,
    # i.e. in the JSON body botocore serialized and sent to the server.
    (body,) = sm_calls.bodies["CreateTrainingJob"]
    sent = json.loads(body)
    assert sent["Environment"] == req["Environment"]
    assert sent["Environment"]["MLCLOUD_JOB_ID"] == record.id
    assert sent["RetryStrategy"] == {"MaximumRetryAttempts": 3}
    assert record.state is JobState.PENDING
    assert record.outputs["logs"].startswith("cloudwatch:/aws/sagemaker/TrainingJobs/")


@pytest.mark.parametrize(
    ("status", "secondary", "state"),
    [
        ("InProgress", "Starting", JobState.PENDING),
        ("InProgress", "Downloading", JobState.PENDING),
        ("InProgress", "Training", JobState.RUNNING),
        ("InProgress", "Interrupted", JobState.RESTARTING),  # spot capacity reclaimed
        ("InProgress", "Restarting", JobState.RESTARTING),
        ("Stopped", "MaxRuntimeExceeded", JobState.FAILED),
        ("Stopped", "Stopped", JobState.CANCELLED),
        ("Failed", "Failed", JobState.FAILED),
    ],
)
def test_status_mapping(
    provider: SageMakerProvider, tmp_path: Path, status: str, secondary: str, state: JobState
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, f"st-{secondary.lower()}")))
    set_job_status(record.native_id or "", status, secondary, transitions=["Starting", secondary])
    got = provider.job_status(record.id)
    assert got.state is state
    assert got.details["secondary_status"] == secondary
    if secondary in ("Interrupted", "Restarting"):
        assert got.attempts == 2


def test_spot_interruption_then_success_records_model_lineage(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, "spot", spot=True)))
    native = record.native_id or ""
    set_job_status(native, "InProgress", "Interrupted")
    assert provider.job_status(record.id).state is JobState.RESTARTING
    set_job_status(native, "Completed", "Completed")
    done = provider.job_status(record.id)
    assert done.state is JobState.SUCCEEDED and done.exit_code == 0
    assert done.outputs["model_dir"] == (
        f"s3://{BUCKET}/mlcloud/spot/output/{native}/output/model.tar.gz"
    )
    assert provider.store.get_job(record.id).outputs["model_dir"] == done.outputs["model_dir"]


def test_failure_reason_and_exit_code(provider: SageMakerProvider, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, "boom")))
    set_job_status(record.native_id or "", "Failed", "Failed", "AlgorithmError: , exit code: 3")
    got = provider.job_status(record.id)
    assert got.state is JobState.FAILED and got.exit_code == 3
    assert "exit code: 3" in (got.message or "")


def test_logs_read_back_and_follow(provider: SageMakerProvider, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, "logs", nodes=2)))
    native = record.native_id or ""
    assert list(provider.job_logs(record.id)) == []  # nothing logged yet
    seed_logs(native, ["epoch 1", "epoch 2"], host="algo-1")
    seed_logs(native, ["worker up"], host="algo-2")
    lines = list(provider.job_logs(record.id))
    assert lines == ["[algo-1-1700000000] epoch 1", "[algo-1-1700000000] epoch 2",
                     "[algo-2-1700000000] worker up"]  # fmt: skip

    set_job_status(native, "InProgress", "Training")

    def job_goes_on() -> None:  # the training container, meanwhile
        time.sleep(0.3)
        seed_logs(native, ["epoch 3"], host="algo-1")
        seed_logs(native, ["uploading model"], host="algo-1")
        set_job_status(native, "Completed", "Completed")

    writer = threading.Thread(target=job_goes_on, daemon=True)
    writer.start()
    started = time.monotonic()
    followed = list(provider.job_logs(record.id, follow=True))  # returns once the job ends
    writer.join(timeout=30)
    assert time.monotonic() - started < 30
    assert followed[-2:] == ["[algo-1-1700000000] epoch 3", "[algo-1-1700000000] uploading model"]
    assert len(followed) == 5


def test_cancel_sends_stop_and_is_idempotent(provider: SageMakerProvider, tmp_path: Path) -> None:
    sm_calls = Calls(provider.clients.sagemaker, "sagemaker")
    record = provider.submit_job(provider.plan_job(_job(tmp_path, "stop")))
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert sm_calls.counts["StopTrainingJob"] == 1
    desc = provider.clients.sagemaker.describe_training_job(TrainingJobName=record.native_id)
    assert desc["TrainingJobStatus"] == "Stopping"


def test_cancel_of_a_job_that_already_finished(provider: SageMakerProvider, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, "fin")))
    set_job_status(record.native_id or "", "Completed", "Completed")
    assert provider.cancel_job(record.id).state is JobState.SUCCEEDED


def test_unknown_jobs(provider: SageMakerProvider) -> None:
    with pytest.raises(NotFoundLocally):
        provider.job_status("nope-000000")


def test_job_deleted_on_aws_is_not_found(provider: SageMakerProvider, tmp_path: Path) -> None:
    from tests.providers.sagemaker.conftest import backend

    record = provider.submit_job(provider.plan_job(_job(tmp_path, "gone")))
    del backend().training_jobs[record.native_id]
    with pytest.raises(NotFound):
        provider.job_status(record.id)


def test_lost_create_answer_is_described_before_retrying(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    """The first CreateTrainingJob reaches SageMaker but its answer is lost (a read timeout once
    botocore's retries are spent): the provider describes, finds the job, and adopts it."""
    from botocore.exceptions import ReadTimeoutError

    sm = provider.clients.sagemaker
    sm_calls = Calls(sm, "sagemaker")

    def lose_answer(**kwargs: Any) -> None:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1")

    sm.meta.events.register("after-call.sagemaker.CreateTrainingJob", lose_answer)
    try:
        record = provider.submit_job(provider.plan_job(_job(tmp_path, "lost")))
    finally:
        sm.meta.events.unregister("after-call.sagemaker.CreateTrainingJob", lose_answer)
    assert sm_calls.counts["CreateTrainingJob"] == 1
    assert record.details["adopted"] is True
    assert record.native_id in {j["TrainingJobName"] for j in sm.list_training_jobs()[
        "TrainingJobSummaries"]}  # fmt: skip


def test_unreachable_aws_is_transient(tmp_path: Path, bucket: str) -> None:
    from mlcloud.config import Profile
    from mlcloud.store import Store
    from tests.providers.sagemaker.conftest import settings

    dead = SageMakerProvider(
        Profile("aws", "sagemaker", settings(endpoint_url="http://127.0.0.1:9", max_attempts=1)),
        Store.open(),
    )
    with pytest.raises(Transient):
        dead.submit_job(dead.plan_job(_job(tmp_path, "dead")))
    assert dead.clients.region == REGION
