"""Vertex CustomJobs: submit (stage, then create once), status, logs, cancel.

The provider's template methods call these inside its error mapping (``errors.translate``);
code here catches mlcloud errors (``Conflict``, ``ProviderError``), never the SDK's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlcloud.errors import Conflict, ProviderError, SpecError, Transient
from mlcloud.records import JobRecord, Plan
from mlcloud.runtime import METRICS_FILE
from providers.common import metrics
from providers.common.waiting import follow_logs, wait_until
from providers.vertex import gcs, states
from providers.vertex.errors import read_retry
from providers.vertex.job_plan import CREATE_CUSTOM_JOB, LABEL_JOB_ID, VertexJobContext

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import CustomJob

    from mlcloud.specs import TrainingJob
    from providers.vertex.clients import LogEntry
    from providers.vertex.provider import VertexProvider

CREATE_ATTEMPTS = 3
CALL_TIMEOUT = 60.0  # seconds per HTTP call
CANCEL_WAIT = 120.0  # how long cancel waits for CANCELLING -> CANCELLED
CANCEL_POLL = 2.0  # seconds between looks while it does
LOG_POLL = 2.0  # seconds between log fetches while following


# ---- submit ----------------------------------------------------------------------------------
def submit(provider: VertexProvider, plan: Plan[TrainingJob]) -> JobRecord:
    context: VertexJobContext = plan.context_as(VertexJobContext)
    request = _request(plan)
    sent = _stage(provider, context)
    job = _create(provider, plan.id, request)
    base = context.base_output
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


def _request(plan: Plan[TrainingJob]) -> Mapping[str, object]:
    calls = [s.call for s in plan.steps]
    if calls != [CREATE_CUSTOM_JOB]:
        raise SpecError(f"plan {plan.id}: expected one {CREATE_CUSTOM_JOB}, got {calls}")
    return plan.steps[0].request


def _stage(provider: VertexProvider, context: VertexJobContext) -> int:
    """Upload the code archive and local inputs the bucket lacks; returns the bytes sent."""
    archive = context.archive
    sent = gcs.put_if_absent(provider, context.code_key, archive.data, "application/gzip")
    by_prefix: dict[str, list[tuple[str, str]]] = {}
    for upload in context.uploads:
        by_prefix.setdefault(upload.prefix, []).append((upload.path, upload.key))
    for prefix, files in by_prefix.items():
        sent += gcs.put_files_if_absent(provider, files, prefix)
    return sent


def _create(provider: VertexProvider, job_id: str, request: Mapping[str, object]) -> CustomJob:
    """Create once: after a lost response, look the job up by label before trying again."""
    from google.cloud import aiplatform_v1

    proto = aiplatform_v1.CreateCustomJobRequest.from_json(
        json.dumps(request), ignore_unknown_fields=False
    )
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with provider.mapped():
                return provider.clients.jobs.create_custom_job(request=proto, timeout=CALL_TIMEOUT)
        except ProviderError as err:
            if not err.retryable or attempt == CREATE_ATTEMPTS:
                raise
            # the create may have happened with its answer lost; if the lookup fails too we
            # cannot tell, so its error propagates rather than risking a second job
            found = find_by_label(provider, job_id)
            if found is not None:
                return found
            time.sleep(min(2.0**attempt * 0.25, 5.0))
    raise AssertionError("unreachable")


def find_by_label(provider: VertexProvider, job_id: str) -> CustomJob | None:
    """The CustomJob labelled with this mlcloud job id, if one was created."""
    request = {
        "parent": provider.settings.parent,
        "filter": f'labels.{LABEL_JOB_ID}="{job_id}"',
    }
    with provider.mapped():
        pages = provider.clients.jobs.list_custom_jobs(
            request=request, retry=read_retry(), timeout=CALL_TIMEOUT
        )
        for job in pages:
            if job.labels.get(LABEL_JOB_ID) == job_id:
                return job
    return None


def console_url(name: str) -> str:
    parts = name.split("/")  # projects/P/locations/L/customJobs/ID
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{parts[3]}/training/"
        f"{parts[5]}/cpu?project={parts[1]}"
    )


# ---- status, cancel --------------------------------------------------------------------------
def status(provider: VertexProvider, record: JobRecord) -> JobRecord:
    """Refresh a job that is not finished yet from its CustomJob."""
    if not record.native_id:
        return record
    job = provider.clients.jobs.get_custom_job(
        name=record.native_id, retry=read_retry(), timeout=CALL_TIMEOUT
    )
    message = job.error.message or None
    state = states.job_state(job.state.name)
    output = record.outputs.get("output_dir", "")
    ended = state.terminal and metrics.due(record) and output.startswith("gs://")
    collected = _metrics(provider, output) if ended else metrics.Collected({}, {})
    return provider.store.update_job(
        record.id,
        state=state,
        message=message,
        exit_code=states.exit_code(message),
        **collected.update,  # in the same update as the end
    )


def _metrics(provider: VertexProvider, output: str) -> metrics.Collected:
    """metrics.json from the job's output folder in Cloud Storage (the job wrote it through the
    /gcs FUSE mount)."""
    bucket, _, prefix = output.removeprefix("gs://").partition("/")
    key = f"{prefix.rstrip('/')}/{METRICS_FILE}"

    def read() -> bytes | None:
        with provider.mapped():
            blob = provider.clients.storage.bucket(bucket).get_blob(key, retry=read_retry())
            if blob is None:
                return None
            if (blob.size or 0) > metrics.MAX_BYTES:
                raise metrics.MetricsFileError(f"{blob.size} bytes, over the limit")
            data: bytes = blob.download_as_bytes(retry=read_retry())
            return data

    return metrics.gather(f"gs://{bucket}/{key}", read)


def cancel(provider: VertexProvider, record: JobRecord) -> JobRecord:
    """Ask Vertex to cancel, then wait (up to CANCEL_WAIT) for CANCELLING to become CANCELLED;
    a job that is still stopping by then is returned as it is."""
    # FAILED_PRECONDITION (a Conflict): it finished, or is already cancelling, meanwhile
    with contextlib.suppress(Conflict), provider.mapped():
        provider.clients.jobs.cancel_custom_job(
            name=record.native_id, retry=read_retry(), timeout=CALL_TIMEOUT
        )
    try:
        return wait_until(
            lambda: provider.job_status(record.id),
            lambda job: job.state.terminal,
            timeout=CANCEL_WAIT,
            poll=CANCEL_POLL,
            what=f"job {record.id} to stop",
            origin=provider.origin,
        )
    except Transient as err:
        if err.code != "WaitTimeout":
            raise
        return provider.store.get_job(record.id)


# ---- logs ------------------------------------------------------------------------------------
def logs(provider: VertexProvider, record: JobRecord, follow: bool) -> Iterator[str]:
    if not record.native_id:
        return iter(())
    since = dt.datetime.fromtimestamp(record.created_at - 60, dt.UTC)
    cursor = _LogCursor(provider, record.native_id.rsplit("/", 1)[-1], since)
    return follow_logs(
        cursor.read_new,
        lambda: provider.job_status(record.id).state.terminal,
        follow=follow,
        poll=LOG_POLL,
    )


@dataclass
class _LogCursor:
    """Reads a CustomJob's Cloud Logging entries; each call returns the lines not seen yet."""

    provider: VertexProvider
    job_number: str  # the numeric id Vertex logs the job under
    since: dt.datetime  # the newest entry's time so far
    seen: set[str] = field(default_factory=set)

    def read_new(self) -> list[str]:
        stamp = self.since.isoformat().replace("+00:00", "Z")
        entries = self.provider.clients.logging.list_entries(
            resource_names=[f"projects/{self.provider.settings.project}"],
            filter_=(
                f'resource.type="ml_job" AND resource.labels.job_id="{self.job_number}" '
                f'AND timestamp>="{stamp}"'
            ),
            order_by="timestamp asc",
            page_size=1000,
        )
        lines = []
        for entry in entries:
            key = entry.insert_id or f"{entry.timestamp}:{_line(entry)}"
            if key in self.seen:
                continue
            self.seen.add(key)
            if entry.timestamp is not None:
                self.since = max(self.since, entry.timestamp)
            lines.append(_line(entry))
        return lines


def _line(entry: LogEntry) -> str:
    payload = entry.payload
    if isinstance(payload, dict):
        return str(payload.get("message", json.dumps(payload, sort_keys=True)))
    return str(payload if payload is not None else "")
