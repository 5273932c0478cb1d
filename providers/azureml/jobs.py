"""Submit, refresh, re-submit and cancel Azure ML command jobs through ``MLClient.jobs``.

Azure ML command jobs have no retry setting, so mlcloud keeps the attempt loop: when a status
refresh finds attempt n failed and ``max_restarts`` allows, attempt n+1 is submitted under its
own native name with the same code asset (no re-upload) and the same checkpoint / output
folders (keyed by the mlcloud job id), and the store records the attempt history and an event.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFound, ProviderError
from mlcloud.provider import JobRecord, JobState
from mlcloud.specs import TrainingJob
from providers.azureml import plan as planning
from providers.azureml.errors import mapped

if TYPE_CHECKING:
    from azure.ai.ml.entities import Job

    from mlcloud.provider import Plan
    from providers.azureml import AzureMLProvider

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
_EXIT = re.compile(r"exit(?:ed)? with (?:status |exit )?code:? ?(-?\d+)", re.I)


def status_text(status: object) -> str:
    """azure-ai-ml returns JobStatus enum members or plain strings."""
    return str(getattr(status, "value", status) or "Unknown")


def state_of(status: object) -> JobState:
    return STATES.get(status_text(status), JobState.PENDING)


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
        entity = planning.build_command(provider, job, job_id, attempt, code)
        with mapped():
            created: Job = provider.client.jobs.create_or_update(entity)
        return created
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def submit_job(provider: AzureMLProvider, plan: Plan) -> JobRecord:
    if plan.type != provider.type or plan.kind != "job" or not isinstance(plan.spec, TrainingJob):
        raise ValueError(f"not an azureml job plan: {plan.type}/{plan.kind}")
    job = plan.spec
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
        outputs={
            "model_dir": str(plan.context.get("model_dir", "")),
            "studio_url": str(created.studio_url or ""),
        },
        details={
            "code_id": str(getattr(created, "code", "")),  # the uploaded code asset's id
            "attempts": [
                {"attempt": 1, "native_id": created.name, "status": status_text(created.status)}
            ],
        },
        spec=job.model_dump(mode="json"),
    )
    return provider.store.add_job(record)


def _failure(provider: AzureMLProvider, native_id: str) -> tuple[str | None, int | None]:
    """The run's error message and the user process's exit code, from run history."""
    try:
        with mapped():
            # No public azure-ai-ml call returns a run's error; jobs.stream prints it from here.
            details = provider.client.jobs._runs_operations.get_run_details(native_id)
    except ProviderError:
        return None, None
    error = getattr(getattr(details, "error", None), "error", None)
    message = getattr(error, "message", None)
    match = _EXIT.search(message or "")
    return message, int(match.group(1)) if match else None


def job_status(provider: AzureMLProvider, job_id: str) -> JobRecord:
    record = provider.store.get_job(job_id)
    if record.state.terminal or record.native_id is None:
        return record
    with mapped():
        native = provider.client.jobs.get(record.native_id)
    state = state_of(native.status)
    history: list[dict[str, Any]] = list(record.details.get("attempts", []))
    if history and history[-1].get("native_id") == native.name:
        history[-1]["status"] = status_text(native.status)
    if state is not JobState.FAILED:
        if state is record.state:
            return provider.store.update_job(job_id, merge_details={"attempts": history})
        return provider.store.update_job(job_id, state=state, merge_details={"attempts": history})
    message, exit_code = _failure(provider, native.name)
    if history:
        history[-1].update({"message": message, "exit_code": exit_code})
    job = TrainingJob.model_validate(record.spec)
    if record.attempts <= job.max_restarts:
        return _resubmit(provider, record, job, history, message)
    return provider.store.update_job(
        job_id,
        state=JobState.FAILED,
        exit_code=exit_code,
        message=message or f"Azure ML job {native.name} failed",
        merge_details={"attempts": history},
        event=f"attempt {record.attempts} failed",
    )


def _resubmit(
    provider: AzureMLProvider,
    record: JobRecord,
    job: TrainingJob,
    history: list[dict[str, Any]],
    message: str | None,
) -> JobRecord:
    attempt = record.attempts + 1
    code = record.details.get("code_id") or None  # the uploaded code asset: no re-upload
    created = _create(provider, job, record.id, attempt, code)
    history.append(
        {"attempt": attempt, "native_id": created.name, "status": status_text(created.status)}
    )
    return provider.store.update_job(
        record.id,
        state=JobState.RESTARTING,
        native_id=created.name,
        attempts=attempt,
        message=message,
        merge_details={"attempts": history},
        event=f"attempt {attempt - 1} ({record.native_id}) failed; re-submitted as "
        f"attempt {attempt} of {job.max_restarts + 1} ({created.name})",
    )


def cancel_job(provider: AzureMLProvider, job_id: str) -> JobRecord:
    record = provider.store.get_job(job_id)
    if record.state.terminal or record.native_id is None:
        return record  # idempotent: a finished job keeps its state
    try:
        with mapped():
            provider.client.jobs.begin_cancel(record.native_id).result()
    except (NotFound, Conflict):
        pass  # gone, or already finished: the status below says which
    with mapped():
        status = provider.client.jobs.get(record.native_id).status
    # Never re-submit here: a job that failed just before the cancel stays failed.
    state = state_of(status)
    final = state if state.terminal else JobState.CANCELLED
    return provider.store.update_job(
        job_id, state=final, event="cancelled by user" if final is JobState.CANCELLED else None
    )
