"""Submit, refresh, advance and cancel Azure ML command jobs through ``MLClient.jobs``.

Azure ML command jobs have no retry setting, so mlcloud keeps the attempt loop, in two halves:

* a refresh (``job_status``, a read) that finds attempt n failed while ``max_restarts`` allows
  another only RECORDS it: state ``RESTARTING``, ``details["resubmit_due"]`` and an event;
* ``advance_job`` (the explicit transition a waiting loop or controller calls) submits attempt
  n+1 under its own native name with the same code asset (no re-upload) and the same
  checkpoint / output folders (keyed by the mlcloud job id), and records the attempt history.

So reading a job's status never creates anything at the far end.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

from mlcloud.errors import Conflict, NotFound, ProviderError
from mlcloud.records import JobRecord, JobState
from mlcloud.runtime import METRICS_FILE
from mlcloud.specs import TrainingJob
from providers.azureml import datastore, job_plan
from providers.azureml.clients import sdk_output_to_stderr
from providers.common import metrics

if TYPE_CHECKING:
    from azure.ai.ml.entities import Job

    from mlcloud.records import Plan
    from providers.azureml.provider import AzureMLProvider

# azure.ai.ml.constants.JobStatus values -> mlcloud states
STATES = {
    "NotStarted": JobState.PENDING,
    "Starting": JobState.PENDING,
    "Provisioning": JobState.PENDING,
    "Preparing": JobState.PENDING,
    "Queued": JobState.PENDING,
    "Paused": JobState.PENDING,
    "Unknown": JobState.PENDING,
    "Running": JobState.RUNNING,
    "Finalizing": JobState.RUNNING,
    "CancelRequested": JobState.CANCELLED,  # Azure finishes it; the user's intent is final
    "Completed": JobState.SUCCEEDED,
    "Failed": JobState.FAILED,
    "NotResponding": JobState.FAILED,
    "Canceled": JobState.CANCELLED,
}
RESUBMIT_DUE = "resubmit_due"  # details key: the last attempt failed and another one is allowed
_EXIT = re.compile(r"exit(?:ed)? with (?:status |exit )?code:? ?(-?\d+)", re.I)


class Attempt(TypedDict, total=False):
    """One entry of ``details["attempts"]``."""

    attempt: int
    native_id: str
    status: str
    message: str | None
    exit_code: int | None


def status_text(status: object) -> str:
    """azure-ai-ml returns JobStatus enum members or plain strings."""
    return str(getattr(status, "value", status) or "Unknown")


def state_of(status: object) -> JobState:
    return STATES.get(status_text(status), JobState.PENDING)


def attempts(record: JobRecord) -> list[Attempt]:
    """The record's attempt history (a copy)."""
    return [cast(Attempt, dict(a)) for a in record.details.get("attempts", [])]


def _attempt(number: int, created: Job) -> Attempt:
    return Attempt(attempt=number, native_id=str(created.name), status=status_text(created.status))


# ---- submit ----------------------------------------------------------------------------------
def _create(
    provider: AzureMLProvider, job: TrainingJob, job_id: str, attempt: int, code: str | None
) -> Job:
    """PUT one attempt. ``code`` None: stage the source (the SDK uploads it by content hash)."""
    from providers.common.staging import write_source_dir

    staging = None
    try:
        if code is None:
            staging = Path(tempfile.mkdtemp(prefix="mlcloud-azureml-"))
            code = str(staging / job.name)
            write_source_dir(Path(job.source), Path(code))
        entity = job_plan.build_command(provider, job, job_id, attempt, code)
        with sdk_output_to_stderr():
            created: Job = provider.clients.ml.jobs.create_or_update(entity)
        return created
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def submit(provider: AzureMLProvider, plan: Plan[TrainingJob]) -> JobRecord:
    job = plan.spec
    context: job_plan.JobContext = plan.context_as(job_plan.JobContext)
    created = _create(provider, job, plan.id, attempt=1, code=None)
    now = time.time()
    record = JobRecord(
        id=plan.id,
        name=job.name,
        provider=provider.name,
        type=provider.type,
        state=state_of(created.status),
        native_id=created.name,
        created_at=now,
        updated_at=now,
        attempts=1,
        outputs={"model_dir": context.model_dir, "studio_url": str(created.studio_url or "")},
        details={
            "code_id": str(getattr(created, "code", "")),  # the uploaded code asset's id
            "attempts": [_attempt(1, created)],
        },
        spec=job.model_dump(mode="json"),
    )
    return provider.store.add_job(record)


# ---- status: a read ----------------------------------------------------------------------------
def _failure(provider: AzureMLProvider, native_id: str) -> tuple[str | None, int | None]:
    """The run's error message and the user process's exit code, from run history."""
    try:
        with provider.mapped():
            message = provider.clients.run_details(native_id).error
    except ProviderError:
        return None, None
    match = _EXIT.search(message or "")
    return message, int(match.group(1)) if match else None


def status(provider: AzureMLProvider, record: JobRecord) -> JobRecord:
    """Refresh from the service. A failed attempt with restarts left is recorded as due for
    re-submission (``advance``), never re-submitted here. The update that records the end also
    records the job's metrics.json (read from its output folder in the datastore)."""
    if record.native_id is None:
        return record
    native = provider.clients.ml.jobs.get(record.native_id)
    state = state_of(native.status)
    history = attempts(record)
    if history and history[-1].get("native_id") == native.name:
        history[-1]["status"] = status_text(native.status)
    if state is not JobState.FAILED or record.details.get(RESUBMIT_DUE):
        changed = state if state is not JobState.FAILED else None  # a due job stays RESTARTING
        ended = _metrics(provider, record) if changed and changed.terminal else _NONE
        return provider.store.update_job(
            record.id,
            state=changed,
            merge_details={"attempts": history, **ended.details},
            merge_outputs=ended.outputs or None,
        )
    message, exit_code = _failure(provider, str(native.name))
    if history:
        history[-1]["message"] = message
        history[-1]["exit_code"] = exit_code
    job = TrainingJob.model_validate(record.spec)
    if record.attempts <= job.max_restarts:
        return provider.store.update_job(
            record.id,
            state=JobState.RESTARTING,
            message=message,
            merge_details={"attempts": history, RESUBMIT_DUE: True},
            event=f"attempt {record.attempts} ({native.name}) failed; attempt "
            f"{record.attempts + 1} of {job.max_restarts + 1} is due",
        )
    ended = _metrics(provider, record)
    return provider.store.update_job(
        record.id,
        state=JobState.FAILED,
        exit_code=exit_code,
        message=message or f"Azure ML job {native.name} failed",
        merge_details={"attempts": history, **ended.details},
        merge_outputs=ended.outputs or None,
        event=f"attempt {record.attempts} failed",
    )


_NONE = metrics.Collected({}, {})


def _metrics(provider: AzureMLProvider, record: JobRecord) -> metrics.Collected:
    """metrics.json from the job's output folder in its datastore, through the SDK's own
    datastore access (an https:// output is not a datastore path: not read)."""
    job = TrainingJob.model_validate(record.spec)
    folder = f"{job_plan.output_base(job, record.id, provider)}/output"
    where = datastore.parse(folder)
    if where is None or not metrics.due(record):
        return _NONE

    def read() -> bytes | None:
        key = f"{where.path}/{METRICS_FILE}"
        try:
            with provider.mapped():
                return provider.datastores.read(
                    where.datastore, key, metrics.MAX_BYTES, where.workspace
                )
        except datastore.TooLarge as e:
            raise metrics.MetricsFileError(str(e)) from None

    return metrics.gather(f"{folder}/{METRICS_FILE}", read)


# ---- advance: the one transition -------------------------------------------------------------
def advance(provider: AzureMLProvider, record: JobRecord) -> JobRecord:
    """Submit the attempt a refresh recorded as due; nothing to do otherwise.

    Idempotent: when the attempt already exists at the far end (another caller advanced the
    job, or the store update after the PUT was lost) it is adopted, not submitted twice.
    """
    if not record.details.get(RESUBMIT_DUE):
        return record
    job = TrainingJob.model_validate(record.spec)
    attempt = record.attempts + 1
    code = record.details.get("code_id") or None  # the uploaded code asset: no re-upload
    try:
        with provider.mapped():
            created = _create(provider, job, record.id, attempt, code)
    except Conflict:
        created = provider.clients.ml.jobs.get(job_plan.native_name(record.id, attempt))
    history = [*attempts(record), _attempt(attempt, created)]
    return provider.store.update_job(
        record.id,
        state=JobState.RESTARTING,
        native_id=created.name,
        attempts=attempt,
        merge_details={"attempts": history, RESUBMIT_DUE: False},
        event=f"attempt {record.attempts} ({record.native_id}) failed; re-submitted as "
        f"attempt {attempt} of {job.max_restarts + 1} ({created.name})",
    )


# ---- cancel ----------------------------------------------------------------------------------
def cancel(provider: AzureMLProvider, record: JobRecord) -> JobRecord:
    """Cancel the running attempt. A job whose last attempt failed (a re-submission due
    included) stays failed: nothing is re-submitted."""
    if record.native_id is None:
        return record
    ml = provider.clients.ml
    try:
        with provider.mapped(), sdk_output_to_stderr():
            ml.jobs.begin_cancel(record.native_id).result()
    except (NotFound, Conflict):
        pass  # gone, or already finished: the status below says which
    state = state_of(ml.jobs.get(record.native_id).status)
    final = state if state.terminal else JobState.CANCELLED
    history = attempts(record)
    exit_code = history[-1].get("exit_code") if history and final is JobState.FAILED else None
    ended = _metrics(provider, record)  # the mounted output folder holds what it wrote so far
    due = {RESUBMIT_DUE: False} if record.details.get(RESUBMIT_DUE) else {}
    return provider.store.update_job(
        record.id,
        state=final,
        exit_code=exit_code,
        merge_details={**due, **ended.details} or None,
        merge_outputs=ended.outputs or None,
        event="cancelled by user" if final is JobState.CANCELLED else None,
    )
