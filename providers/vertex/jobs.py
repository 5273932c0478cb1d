"""Vertex CustomJobs: submit (stage, then create once), status, logs, cancel."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, MlcloudError, ProviderError
from mlcloud.provider import JobRecord, Plan
from providers.vertex import gcs, states
from providers.vertex.errors import call, mapped, read_retry
from providers.vertex.plan import CREATE_CUSTOM_JOB, LABEL_JOB_ID

if TYPE_CHECKING:
    from providers.vertex import VertexProvider

CREATE_ATTEMPTS = 3
CALL_TIMEOUT = 60.0  # seconds per HTTP call
CANCEL_WAIT = 120.0  # how long cancel_job waits for CANCELLING -> CANCELLED
LOG_POLL = 2.0  # seconds between log fetches while following


def _check_plan(provider: VertexProvider, plan: Plan) -> dict[str, Any]:
    if plan.type != provider.type or plan.provider != provider.name or plan.kind != "job":
        raise MlcloudError(
            f"plan {plan.id} was made by {plan.type} profile {plan.provider!r} for a {plan.kind}",
            hint=f"plan it again with profile {provider.name!r}",
        )
    calls = [s.call for s in plan.steps]
    if calls != [CREATE_CUSTOM_JOB]:
        raise MlcloudError(f"plan {plan.id}: expected one {CREATE_CUSTOM_JOB}, got {calls}")
    return dict(plan.steps[0].request)


def _stage(provider: VertexProvider, plan: Plan) -> int:
    """Upload the code archive and local inputs the bucket lacks; returns the bytes sent."""
    bucket = provider.clients.bucket
    archive = plan.context["archive"]
    sent = gcs.put_if_absent(bucket, plan.context["code_key"], archive.data, "application/gzip")
    by_prefix: dict[str, list[tuple[str, str]]] = {}
    for upload in plan.context["uploads"]:
        by_prefix.setdefault(upload.prefix, []).append((upload.path, upload.key))
    for prefix, files in by_prefix.items():
        sent += gcs.put_files_if_absent(bucket, files, prefix)
    return sent


def find_by_label(provider: VertexProvider, job_id: str) -> Any | None:
    """The CustomJob labelled with this mlcloud job id, if one was created."""
    request = {
        "parent": provider.settings.parent,
        "filter": f'labels.{LABEL_JOB_ID}="{job_id}"',
    }
    pages = call(
        "listing custom jobs",
        provider.clients.jobs.list_custom_jobs,
        request=request,
        retry=read_retry(),
        timeout=CALL_TIMEOUT,
    )
    with mapped("listing custom jobs"):
        for job in pages:
            if job.labels.get(LABEL_JOB_ID) == job_id:
                return job
    return None


def _create(provider: VertexProvider, plan: Plan, request: dict[str, Any]) -> Any:
    """Create once: after a lost response, look the job up by label before trying again."""
    from google.cloud import aiplatform_v1

    proto = aiplatform_v1.CreateCustomJobRequest.from_json(
        json.dumps(request), ignore_unknown_fields=False
    )
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            return call(
                "creating the custom job",
                provider.clients.jobs.create_custom_job,
                request=proto,
                timeout=CALL_TIMEOUT,
            )
        except ProviderError as err:
            if not err.retryable or attempt == CREATE_ATTEMPTS:
                raise
            # the create may have happened with its answer lost; if the lookup fails too we
            # cannot tell, so its error propagates rather than risking a second job
            found = find_by_label(provider, plan.id)
            if found is not None:
                return found
            time.sleep(min(2.0**attempt * 0.25, 5.0))
    raise AssertionError("unreachable")


def console_url(name: str) -> str:
    parts = name.split("/")  # projects/P/locations/L/customJobs/ID
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{parts[3]}/training/"
        f"{parts[5]}/cpu?project={parts[1]}"
    )


def submit_job(provider: VertexProvider, plan: Plan) -> JobRecord:
    request = _check_plan(provider, plan)
    sent = _stage(provider, plan)
    job = _create(provider, plan, request)
    base = plan.context["base_output"]
    record = JobRecord(
        id=plan.id,
        name=plan.spec.name,
        provider=provider.name,
        type=provider.type,
        state=states.job_state(job.state.name),
        native_id=job.name,
        outputs={
            "model_dir": f"{base}/model",  # AIP_MODEL_DIR
            "output_dir": f"{base}/output",
            "console": console_url(job.name),
        },
        details={"custom_job": job.name, "staged_bytes": sent},
        spec=plan.spec.model_dump(mode="json"),
    )
    return provider.store.add_job(record)


def job_status(provider: VertexProvider, job_id: str) -> JobRecord:
    record = provider.store.get_job(job_id)
    if record.state.terminal or not record.native_id:
        return record
    job = call(
        f"describing job {job_id}",
        provider.clients.jobs.get_custom_job,
        name=record.native_id,
        retry=read_retry(),
        timeout=CALL_TIMEOUT,
    )
    message = job.error.message or None
    return provider.store.update_job(
        job_id,
        state=states.job_state(job.state.name),
        message=message,
        exit_code=states.exit_code(message),
    )


def cancel_job(provider: VertexProvider, job_id: str) -> JobRecord:
    record = job_status(provider, job_id)
    if record.state.terminal:
        return record
    # FAILED_PRECONDITION (a Conflict): it finished, or is already cancelling, meanwhile
    with contextlib.suppress(Conflict):
        call(
            f"cancelling job {job_id}",
            provider.clients.jobs.cancel_custom_job,
            name=record.native_id,
            retry=read_retry(),
            timeout=CALL_TIMEOUT,
        )
    deadline = time.monotonic() + CANCEL_WAIT
    delay = 0.1
    while not record.state.terminal and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
        record = job_status(provider, job_id)
    return record


def _log_filter(job_number: str, since: str) -> str:
    return (
        f'resource.type="ml_job" AND resource.labels.job_id="{job_number}" AND timestamp>="{since}"'
    )


def _line(entry: Any) -> str:
    payload = entry.payload
    if isinstance(payload, dict):
        return str(payload.get("message", json.dumps(payload, sort_keys=True)))
    return str(payload if payload is not None else "")


def job_logs(provider: VertexProvider, job_id: str, follow: bool = False) -> Iterator[str]:
    record = provider.store.get_job(job_id)
    if not record.native_id:
        return
    client = provider.clients.logging
    job_number = record.native_id.rsplit("/", 1)[-1]
    since = dt.datetime.fromtimestamp(record.created_at - 60, dt.UTC)
    seen: set[str] = set()
    finished = False
    while True:
        stamp = since.isoformat().replace("+00:00", "Z")
        with mapped(f"reading logs of {job_id}"):
            entries = list(
                client.list_entries(
                    resource_names=[f"projects/{provider.settings.project}"],
                    filter_=_log_filter(job_number, stamp),
                    order_by="timestamp asc",
                    page_size=1000,
                )
            )
        new = 0
        for entry in entries:
            key = entry.insert_id or f"{entry.timestamp}:{_line(entry)}"
            if key in seen:
                continue
            seen.add(key)
            new += 1
            if entry.timestamp is not None:
                since = max(since, entry.timestamp)
            yield _line(entry)
        if not follow:
            return
        if finished and not new:
            return
        # once the job has ended, one more pass picks up lines written just before the end
        finished = job_status(provider, job_id).state.terminal
        if not finished:
            time.sleep(LOG_POLL)


def list_jobs(provider: VertexProvider) -> list[JobRecord]:
    return provider.store.list_jobs(provider=provider.name)
