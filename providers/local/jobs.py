"""Local training jobs: a plan (``job_plan.py``) run detached under a supervisor.

``submit`` writes the plan into ``$MLCLOUD_HOME/jobs/<id>/supervisor.json`` and starts
``providers.local.supervisor`` in its own session, so the job (and its final status) outlives the
CLI. The supervisor records every attempt, state and exit code in the store, and what each
process it started really got (``launched.jsonl``, see ``supervisor.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mlcloud import runtime, sensitive
from mlcloud.errors import SpecError, Transient
from mlcloud.records import JobRecord, JobState, Plan
from providers.common import metrics
from providers.common.waiting import follow_logs, wait_until
from providers.local import procs, supervisor
from providers.local.job_plan import LocalJobContext, job_dir

if TYPE_CHECKING:
    from mlcloud.specs import TrainingJob
    from providers.local.provider import LocalProvider

LOG_POLL = 0.1  # seconds between reads of a followed log
LOCK_FILE = "supervisor.lock"  # held by whoever runs the job (procs.take_lock)
ORPHAN_GRACE = 3.0  # SIGTERM -> SIGKILL for what a dead supervisor left behind, seconds


def submit(provider: LocalProvider, plan: Plan[TrainingJob]) -> JobRecord:
    """All or nothing, whenever the caller dies: the record comes first, naming this process as
    the job's owner; then the job dir, its lock (``procs.take_lock``) and the supervisor, which
    inherits the lock. A submitter killed before the hand-over leaves a PENDING job that nobody
    owns, which the next look at it (``status``, every listing) fails as never started."""
    ctx = plan.context_as(LocalJobContext)
    home = Path(ctx.job_dir)
    spec = _supervisor_spec(provider, plan, ctx)
    _check_env_from(spec, ctx)  # {from_env: NAME} is read now: a missing one fails the submit
    provider.store.add_job(_pending_record(provider, plan, spec, home))
    try:
        lock = _prepare_job_dir(home, spec)
        try:
            pid = supervisor.spawn(
                home / "supervisor.json",
                home / "supervisor.log",
                ctx.python,
                env=ctx.hidden_env,
                lock_fd=lock,
            )
        finally:
            os.close(lock)  # the supervisor holds it now
    except BaseException as exc:  # failed or interrupted: the job never started; say so
        reason = "the submit was interrupted" if isinstance(exc, KeyboardInterrupt) else exc
        provider.store.update_job(
            plan.id, state=JobState.FAILED, message=f"its supervisor did not start: {reason}"
        )
        raise
    return provider.store.update_job(plan.id, merge_details={"supervisor": procs.identity(pid)})


def _pending_record(
    provider: LocalProvider, plan: Plan[TrainingJob], spec: supervisor.SupervisorSpec, home: Path
) -> JobRecord:
    env = plan.steps[0].request["env"]
    return JobRecord(
        id=plan.id,
        name=plan.spec.name,
        provider=provider.name,
        type=provider.type,
        state=JobState.PENDING,
        native_id=plan.id,
        outputs={
            "model_dir": env[runtime.ENV_MODEL_DIR],
            "output_dir": env[runtime.ENV_OUTPUT_DIR],
            "logs": spec["log"],
        },
        details={"submitter": procs.identity(os.getpid()), "job_dir": str(home)},
        spec=plan.spec.model_dump(mode="json"),
    )


def _prepare_job_dir(home: Path, spec: supervisor.SupervisorSpec) -> int:
    """The job dir with its supervisor spec; returns the job's lock, held."""
    (home / "logs").mkdir(parents=True, exist_ok=True)
    lock = procs.take_lock(home / LOCK_FILE)
    try:
        sensitive.write_private(home / "supervisor.json", json.dumps(spec, indent=2))
    except BaseException:
        os.close(lock)
        raise
    return lock


def _supervisor_spec(
    provider: LocalProvider, plan: Plan[TrainingJob], ctx: LocalJobContext
) -> supervisor.SupervisorSpec:
    home = Path(ctx.job_dir)
    return {
        "job_id": plan.id,
        "state_db": provider.store.locator,
        "steps": [
            {
                "argv": list(r["argv"]),
                "env": dict(r["env"]),
                "env_from": dict(r.get("env_from") or {}),
                "cwd": str(r["cwd"]),
            }
            for r in (s.request for s in plan.steps)
        ],
        "rdzv": {"host": ctx.rdzv.host, "port": ctx.rdzv.port} if ctx.rdzv else None,
        "restarts": ctx.restarts,
        "grace": ctx.grace,
        "max_runtime": plan.spec.max_runtime_seconds,
        "backoff": list(ctx.backoff),
        "log": str(home / "logs" / "job.log"),
        "launched": str(home / supervisor.LAUNCHED_FILE),
    }


def _check_env_from(spec: supervisor.SupervisorSpec, ctx: LocalJobContext) -> None:
    environ = {**os.environ, **ctx.hidden_env}
    for step in spec["steps"]:
        try:
            sensitive.resolve_env_from(step["env_from"], environ)
        except sensitive.MissingSecret as exc:
            raise SpecError(
                f"env: {exc}", hint="export it first, or drop the reference from env"
            ) from None


def owner_alive(record: JobRecord) -> bool:
    """Whether a process still runs the job: whoever holds its lock (the supervisor), or before
    the lock exists the submitter. One ``flock`` or one pid + create-time look: cheap enough
    for every listing. A record of an older version is judged by its supervisor's pid."""
    folder = record.details.get("job_dir")
    held = procs.lock_held(Path(folder) / LOCK_FILE) if folder else None
    if held is not None:
        return held
    owner = record.details.get("supervisor") or record.details.get("submitter")
    return not owner or procs.alive(owner)


def status(provider: LocalProvider, record: JobRecord) -> JobRecord:
    """A job that nobody runs any more (its supervisor, or its submitter before the hand-over,
    died without recording its end) is cleaned up and failed, with the reason."""
    if owner_alive(record):
        return record
    # Re-read: the supervisor may have recorded the end just before exiting.
    record = provider.store.get_job(record.id)
    if record.state.terminal:
        return record
    return _clean_up(provider, record)


def _clean_up(provider: LocalProvider, record: JobRecord) -> JobRecord:
    """Cleaned up, not adopted: only a parent can wait for a process and learn how it ended,
    so a new supervisor could neither record the orphaned attempt's exit code nor restart it as
    the plan says, and on Linux the supervisor's children were sent SIGTERM when it died
    (``supervisor.die_with_parent``). What is left is stopped; the job fails, saying why."""
    stopped = procs.kill_job_processes(record.id, grace=ORPHAN_GRACE)
    sup = record.details.get("supervisor")
    if sup is None and not record.attempts:
        submitter = record.details.get("submitter") or {}
        message = (
            f"never started: the process that submitted it (pid {submitter.get('pid')}) ended "
            "before the job's supervisor took over"
        )
    else:
        left = f"; {stopped} leftover process(es) stopped" if stopped else ""
        message = (
            f"its supervisor (pid {(sup or {}).get('pid')}) died{left}; see supervisor.log in "
            "the job dir"
        )
    collected = metrics.gather_dir(record.outputs.get("output_dir"))
    return provider.store.update_job(
        record.id, state=JobState.FAILED, message=message, **collected.update
    )


def logs(provider: LocalProvider, record: JobRecord, follow: bool) -> Iterator[str]:
    default = job_dir(provider.store.home, record.id) / "logs" / "job.log"
    tail = _LogTail(Path(record.outputs.get("logs") or default), final=not follow)

    def finished() -> bool:
        tail.final = provider.job_status(record.id).state.terminal
        return tail.final

    try:
        yield from follow_logs(tail.read_new, finished, follow=follow, poll=LOG_POLL)
    finally:
        tail.close()


class _LogTail:
    """The complete lines appended to a log since the last read; on the ``final`` read, the
    unterminated last line too. A log that does not exist yet has no lines."""

    def __init__(self, path: Path, final: bool) -> None:
        self.path = path
        self.final = final
        self._fh: TextIO | None = None
        self._pending = ""

    def read_new(self) -> list[str]:
        if self._fh is None:
            try:
                self._fh = self.path.open("r", encoding="utf-8", errors="replace")
            except FileNotFoundError:
                return []
        lines = (self._pending + self._fh.read()).split("\n")
        self._pending = lines.pop()
        if self.final and self._pending:
            lines.append(self._pending)
            self._pending = ""
        return lines

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def cancel(provider: LocalProvider, record: JobRecord) -> JobRecord:
    """SIGTERM the supervisor, which stops the job (SIGTERM → grace → SIGKILL) and records it;
    a supervisor that is gone or does not answer in time: end the processes here."""
    grace = provider.settings.cancel_grace
    sup = record.details.get("supervisor")
    if sup and procs.alive(sup):
        with contextlib.suppress(ProcessLookupError):  # it ended in between
            os.kill(sup["pid"], signal.SIGTERM)
        try:
            # Gone is enough: a supervisor still starting (a fresh interpreter, from a threaded
            # caller such as the server) dies of the SIGTERM before its handler is installed,
            # recording nothing; waiting for a terminal state would wait out the timeout.
            ended = wait_until(
                lambda: provider.store.get_job(record.id),
                lambda r: not procs.alive(sup),
                timeout=grace + 10,
                poll=0.05,
                what=f"the supervisor of job {record.id} to stop it",
                origin=provider.origin,
            )
            if ended.state.terminal:
                return ended
        except Transient:
            pass  # it did not answer: below
    procs.kill_job_processes(record.id, grace=grace)
    collected = metrics.gather_dir(record.outputs.get("output_dir"))
    return provider.store.update_job(
        record.id, state=JobState.CANCELLED, message="cancelled", **collected.update
    )
