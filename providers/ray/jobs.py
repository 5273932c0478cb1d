"""Ray jobs: submit (stage, then submit once), status, logs, cancel, and the restart loop.

Ray Jobs run once ("retries are the submitter's"), so mlcloud owns ``max_restarts`` of a
one-node job, in two halves, as for Azure ML:

* a refresh (``job_status``, a read) that finds attempt n failed while ``max_restarts`` allows
  another only RECORDS it: state ``RESTARTING`` and ``details["resubmit_due"]``;
* ``advance_job`` (what a waiting loop or the server's controller calls) submits attempt n+1 as
  its own Ray job (``<id>-a<n+1>``) with the same request, re-staging the packages if the
  cluster has dropped them. ``advance_job`` also stops an attempt that outran ``max_runtime``
  (Ray Jobs have no time limit).

A distributed job restarts inside torchrun (``--max-restarts``, see ``elastic.py``), so mlcloud
does not re-submit it. The provider's template methods call these inside its error
mapping; code here catches mlcloud errors (``NotFound``, ``ProviderError``), never Ray's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from mlcloud import runtime
from mlcloud.errors import (
    Conflict,
    NotFound,
    ProviderError,
    QuotaExceeded,
    SpecError,
    Transient,
)
from mlcloud.records import JobRecord, JobState
from mlcloud.specs import TrainingJob
from providers.common import metrics
from providers.common.waiting import wait_until
from providers.ray import job_plan
from providers.ray.cluster import user_processes
from providers.ray.job_plan import SUBMIT_JOB, RayJobContext

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

    from mlcloud.records import Plan
    from providers.ray.provider import RayProvider

STATES = {
    "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "STOPPED": JobState.CANCELLED,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
}
RESUBMIT_DUE = "resubmit_due"  # details key: the last attempt failed and another one is allowed
SUBMIT_ATTEMPTS = 3
CANCEL_POLL = 0.2  # seconds between looks while a cancelled job stops
CANCEL_SLACK = 30.0  # seconds allowed on top of the grace for Ray to report it stopped
LEFTOVER_WAIT = 3.0  # seconds a stopped job's processes get to end before they are killed
MESSAGE_CHARS = 500  # of Ray's failure message (it appends the log's tail)
_STORED = ("entrypoint", "submission_id", "runtime_env", "metadata")


class Attempt(TypedDict, total=False):
    """One entry of ``details["attempts"]``."""

    attempt: int
    submission_id: str
    submitted_at: float
    status: str
    exit_code: int | None
    message: str | None


def attempts(record: JobRecord) -> list[Attempt]:
    return [cast(Attempt, dict(a)) for a in record.details.get("attempts", [])]


# ---- submit ----------------------------------------------------------------------------------
def submit(provider: RayProvider, plan: Plan[TrainingJob]) -> JobRecord:
    context = plan.context_as(RayJobContext)
    request = _request(plan)
    _check_fits(provider, plan.spec)
    cached = [_cache(provider, p) for p in context.packages]
    sent = stage(provider, cached)
    native = _submit(provider, request)
    env = request["runtime_env"]["env_vars"]
    now = time.time()
    record = JobRecord(
        id=plan.id,
        name=plan.spec.name,
        provider=provider.name,
        type=provider.type,
        state=JobState.PENDING,
        native_id=native,
        created_at=now,
        updated_at=now,
        attempts=1,
        outputs={
            "model_dir": env[runtime.ENV_MODEL_DIR],
            "output_dir": env[runtime.ENV_OUTPUT_DIR],
            "dashboard": f"{provider.clients.endpoint.url}/#/jobs/{native}",
        },
        details={
            "attempts": [Attempt(attempt=1, submission_id=native, submitted_at=now)],
            "packages": [[uri, str(path)] for uri, path in cached],
            "restarts": context.restarts,
            "staged_bytes": sent,
            "job_dir": context.job_dir,
        },
        spec=plan.spec.model_dump(mode="json"),
    )
    return provider.store.add_job(record)


def _request(plan: Plan[TrainingJob]) -> dict[str, Any]:
    calls = [s.call for s in plan.steps]
    if calls != [SUBMIT_JOB]:
        raise SpecError(f"plan {plan.id}: expected one {SUBMIT_JOB}, got {calls}")
    return dict(plan.steps[0].request)


def _check_fits(provider: RayProvider, job: TrainingJob) -> None:
    """On the cluster mlcloud started (its nodes are fixed: no autoscaler adds bigger ones), a
    job asking more of a node than every node has would wait forever: refused, with sizes."""
    need = job_plan.node_resources(job)
    if not provider.settings.local or not need:
        return
    listed = provider.clients.get_json("/api/v0/nodes?detail=1&limit=1000")
    nodes = [n["resources_total"] for n in listed["data"]["result"]["result"]]
    nodes = nodes or [{}]
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return
    largest = {k: max(node.get(k, 0.0) for node in nodes) for k in need}
    raise provider.origin.error(
        QuotaExceeded,
        f"{provider.origin}: no node of the local Ray cluster has what one node of this job "
        f"asks: {_sizes(need)} (the largest node has {_sizes(largest)})",
        code="NoNodeFits",
        hint="lower the job's resources (e.g. --set resources.cpus=1 --set "
        "resources.memory=null), or give the cluster more logical CPUs (num_cpus: in the "
        "profile; Ray then over-subscribes the machine) and restart it",
    )


def _sizes(resources: Mapping[str, float]) -> str:
    def show(key: str, value: float) -> str:
        return f"memory {value / 2**30:.1f}Gi" if key == "memory" else f"{key} {value:g}"

    return ", ".join(show(k, v) for k, v in sorted(resources.items()))


def _cache(provider: RayProvider, package: job_plan.Package) -> tuple[str, Path]:
    """A local copy of each package (by its content digest), to re-stage a later attempt
    after the cluster dropped an unused package."""
    folder = provider.store.home / "ray" / "packages"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / package.uri.rsplit("/", 1)[-1]
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(package.data)
        tmp.replace(path)
    return package.uri, path


def stage(provider: RayProvider, packages: list[tuple[str, Path]]) -> int:
    """Upload the packages the cluster lacks; returns the bytes sent (0: nothing changed).

    The Jobs API's package calls (``GET`` / ``PUT /api/packages/gcs/<name>``) are what the SDK
    itself uses for a local ``working_dir``; it has no public method for a prepared file."""
    client = provider.clients.jobs
    sent = 0
    for uri, path in packages:
        if client._package_exists(uri):
            continue
        client._upload_package(uri, str(path), include_gitignore=False, is_file=True)
        sent += path.stat().st_size
    return sent


def _submit(provider: RayProvider, request: Mapping[str, Any]) -> str:
    """Submit once: after a lost answer, a job with this submission id is ours (adopted)."""
    wanted = request["submission_id"]
    for attempt in range(1, SUBMIT_ATTEMPTS + 1):
        try:
            with provider.mapped():
                return str(provider.clients.jobs.submit_job(**request))
        except ProviderError as err:
            if isinstance(err, Conflict) or err.retryable:
                found = _find(provider, wanted, request["metadata"][job_plan.META_JOB_ID])
                if found is not None:
                    return found
            if not err.retryable or attempt == SUBMIT_ATTEMPTS:
                raise
            time.sleep(min(0.5 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def _find(provider: RayProvider, submission: str, job_id: str) -> str | None:
    try:
        with provider.mapped():
            info = provider.clients.jobs.get_job_info(submission)
    except NotFound:
        return None
    if (info.metadata or {}).get(job_plan.META_JOB_ID) != job_id:
        raise provider.origin.error(
            Conflict, f"{provider.origin}: Ray job {submission} exists and is not this job's"
        )
    return submission


def first_request(provider: RayProvider, record: JobRecord) -> dict[str, Any]:
    """Attempt 1's request: what the Jobs API stored (``GET /api/jobs/<id>``: mlcloud's store
    keeps no environment values) and the entrypoint's resources, planned again from the spec
    (the Jobs API does not return them)."""
    info = provider.clients.get_json(f"/api/jobs/{job_plan.submission_id(record.id, 1)}")
    job = TrainingJob.model_validate(record.spec)
    return {
        **{key: info[key] for key in _STORED},
        **job_plan.entrypoint_resources(job.resources),
    }


# ---- status: a read ----------------------------------------------------------------------------
def status(provider: RayProvider, record: JobRecord) -> JobRecord:
    """Refresh from the Jobs API. A failed attempt with restarts left is recorded as due for
    re-submission (``advance``), never re-submitted here. The update that records the end also
    records the job's metrics.json (``_metrics``)."""
    if record.native_id is None or record.details.get(RESUBMIT_DUE):
        return record
    info = provider.clients.jobs.get_job_info(record.native_id)
    state = STATES.get(str(info.status), JobState.PENDING)
    history = attempts(record)
    message = _message(info)
    if history:
        history[-1]["status"] = str(info.status)
        history[-1]["exit_code"] = info.driver_exit_code
        if state.terminal:
            history[-1]["message"] = message
    if state is not JobState.FAILED:
        ended = _metrics(provider, record) if state.terminal else _NONE
        return provider.store.update_job(
            record.id,
            state=state,
            message=message if state.terminal else None,
            merge_details={"attempts": history, **ended.details},
            merge_outputs=ended.outputs or None,
        )
    if record.attempts <= int(record.details.get("restarts", 0)):
        return provider.store.update_job(
            record.id,
            state=JobState.RESTARTING,
            message=message,
            merge_details={"attempts": history, RESUBMIT_DUE: True},
            event=f"attempt {record.attempts} ({record.native_id}) failed; attempt "
            f"{record.attempts + 1} of {int(record.details['restarts']) + 1} is due",
        )
    ended = _metrics(provider, record)
    return provider.store.update_job(
        record.id,
        state=JobState.FAILED,
        exit_code=info.driver_exit_code,
        message=message,
        merge_details={"attempts": history, **ended.details},
        merge_outputs=ended.outputs or None,
        event=f"attempt {record.attempts} failed",
    )


_NONE = metrics.Collected({}, {})


def _metrics(provider: RayProvider, record: JobRecord) -> metrics.Collected:
    """The job's metrics.json from its output dir, when that is readable here (the cluster
    mlcloud starts, one on this machine, a shared filesystem); a remote node's path is not."""
    folder = record.outputs.get("output_dir")
    readable = provider.settings.local or (folder and Path(folder).is_dir())
    return metrics.gather_dir(folder) if readable and metrics.due(record) else _NONE


def _message(info: JobDetails) -> str | None:
    text = (info.message or "").strip()
    if not text:
        return None
    first = text.splitlines()[0]
    return first if len(first) <= MESSAGE_CHARS else first[:MESSAGE_CHARS] + "..."


# ---- advance: the one transition -------------------------------------------------------------
def advance(provider: RayProvider, record: JobRecord) -> JobRecord:
    """Submit the attempt a refresh recorded as due, or stop one past ``max_runtime``."""
    job = TrainingJob.model_validate(record.spec)
    if record.details.get(RESUBMIT_DUE):
        return _resubmit(provider, record, job)
    history = attempts(record)
    started = history[-1].get("submitted_at", record.created_at) if history else record.created_at
    if record.state is not JobState.RUNNING or time.time() - started <= job.max_runtime_seconds:
        return record
    stopped = cancel(provider, record, why="max_runtime")
    if stopped.state is not JobState.CANCELLED:
        return stopped  # it ended on its own meanwhile
    return provider.store.update_job(
        record.id,
        state=JobState.FAILED,
        unless_terminal=False,  # from the CANCELLED the stop recorded
        message=f"stopped: it ran longer than max_runtime ({job.max_runtime})",
        event=f"stopped after max_runtime {job.max_runtime}",
    )


def _resubmit(provider: RayProvider, record: JobRecord, job: TrainingJob) -> JobRecord:
    attempt = record.attempts + 1
    request = job_plan.attempt_request(first_request(provider, record), record.id, attempt)
    packages = [(str(uri), Path(path)) for uri, path in record.details.get("packages", [])]
    stage(provider, packages)  # an unused package may have been dropped by the cluster
    native = _submit(provider, request)
    history = [*attempts(record), Attempt(attempt=attempt, submission_id=native,
                                          submitted_at=time.time())]  # fmt: skip
    return provider.store.update_job(
        record.id,
        state=JobState.RESTARTING,
        native_id=native,
        attempts=attempt,
        merge_details={"attempts": history, RESUBMIT_DUE: False},
        event=f"attempt {record.attempts} ({record.native_id}) failed; re-submitted as "
        f"attempt {attempt} of {job.max_restarts + 1} ({native})",
    )


# ---- cancel ----------------------------------------------------------------------------------
def cancel(provider: RayProvider, record: JobRecord, why: str = "cancelled by user") -> JobRecord:
    """``stop_job`` (Ray sends SIGTERM to the entrypoint's processes, SIGKILL after the
    grace), wait until Ray reports the attempt ended, then kill what is left of the job on
    this machine (processes that left the entrypoint's tree). A job whose last
    attempt failed (a re-submission due included) stays failed: nothing is re-submitted."""
    if record.native_id is None:
        return record
    if record.details.get(RESUBMIT_DUE):
        return provider.store.update_job(
            record.id, state=JobState.FAILED, merge_details={RESUBMIT_DUE: False}
        )
    client, native = provider.clients.jobs, record.native_id
    with contextlib.suppress(NotFound), provider.mapped():
        client.stop_job(native)
    grace = provider.settings.cancel_grace
    try:
        info = wait_until(
            lambda: client.get_job_info(native),
            lambda i: STATES.get(str(i.status), JobState.PENDING).terminal,
            timeout=grace + CANCEL_SLACK,
            poll=CANCEL_POLL,
            what=f"Ray job {native} to stop",
            origin=provider.origin,
        )
        state = STATES[str(info.status)]
    except Transient as err:
        if err.code != "WaitTimeout":
            raise
        state = JobState.CANCELLED  # asked twice over; what is left is killed below
    killed = _kill_leftovers(record.id)
    exit_code = info.driver_exit_code if state is JobState.FAILED else None
    note = f"; {killed} leftover process(es) killed" if killed else ""
    ended = _metrics(provider, record)
    return provider.store.update_job(
        record.id,
        state=state,
        exit_code=exit_code,
        message=f"{why}{note}" if state is JobState.CANCELLED else None,
        event=why if state is JobState.CANCELLED else None,
        **ended.update,
    )


def _kill_leftovers(job_id: str) -> int:
    """Processes of the job still alive on this machine after Ray stopped it (a daemon that
    left the entrypoint's process tree; on the cluster mlcloud started every node is here)
    are SIGKILLed. Ray's own processes for the job (its supervisor actor and that one's
    watcher) are Ray's to end. Only processes carrying this job's id are touched."""
    _poll(lambda: not user_processes(job_id), LEFTOVER_WAIT)
    left = user_processes(job_id)
    for proc in left:
        with contextlib.suppress(Exception):
            proc.send_signal(signal.SIGKILL)
    return len(left)


def _poll(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)


# ---- logs ------------------------------------------------------------------------------------
def logs(provider: RayProvider, record: JobRecord, follow: bool) -> Iterator[str]:
    """Every attempt's driver log, oldest first (each headed ``[mlcloud] attempt n`` when
    mlcloud may submit another attempt); with ``follow`` the last attempt is streamed
    (``tail_job_logs``) until it ends. A reader never re-submits: ``mlcloud.api.Job.logs``
    advances, then reads again."""
    headed = int(record.details.get("restarts", 0)) > 0  # mlcloud may submit another attempt
    history = attempts(record) or [Attempt(attempt=1, submission_id=record.native_id or "")]
    client = provider.clients.jobs
    for index, entry in enumerate(history):
        submission = entry["submission_id"]
        if headed:
            yield f"[mlcloud] attempt {index + 1} ({submission})"
        if follow and index == len(history) - 1:
            yield from _tail(provider, submission)
        else:
            yield from client.get_job_logs(submission).splitlines()


def _tail(provider: RayProvider, submission: str) -> Iterator[str]:
    """``tail_job_logs`` (a websocket the dashboard closes when the job ends), as lines."""
    stream = cast(AsyncGenerator[str, None], provider.clients.jobs.tail_job_logs(submission))
    loop = asyncio.new_event_loop()
    pending = ""
    try:
        while True:
            try:
                chunk = loop.run_until_complete(anext(stream))
            except StopAsyncIteration:
                break
            lines = (pending + chunk).split("\n")
            pending = lines.pop()
            yield from lines
        if pending:
            yield pending
    finally:
        with contextlib.suppress(Exception):
            loop.run_until_complete(stream.aclose())
        loop.close()
