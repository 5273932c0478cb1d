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

from mlcloud import runtime
from mlcloud.errors import Transient
from mlcloud.records import JobRecord, JobState, Plan
from providers.common.waiting import follow_logs, wait_until
from providers.local import procs, supervisor
from providers.local.job_plan import LocalJobContext, job_dir

if TYPE_CHECKING:
    from mlcloud.specs import TrainingJob
    from providers.local.provider import LocalProvider

LOG_POLL = 0.1  # seconds between reads of a followed log


def submit(provider: LocalProvider, plan: Plan[TrainingJob]) -> JobRecord:
    ctx = plan.context_as(LocalJobContext)
    home = Path(ctx.job_dir)
    spec = _supervisor_spec(provider, plan, ctx)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    (home / "supervisor.json").write_text(json.dumps(spec, indent=2))
    env = plan.steps[0].request["env"]
    provider.store.add_job(
        JobRecord(
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
            spec=plan.spec.model_dump(mode="json"),
        )
    )
    try:
        pid = supervisor.spawn(home / "supervisor.json", home / "supervisor.log", ctx.python)
    except Exception as exc:  # the job never started: say so, never leave it PENDING
        provider.store.update_job(
            plan.id, state=JobState.FAILED, message=f"its supervisor did not start: {exc}"
        )
        raise
    return provider.store.update_job(
        plan.id, merge_details={"supervisor": procs.identity(pid), "job_dir": str(home)}
    )


def _supervisor_spec(
    provider: LocalProvider, plan: Plan[TrainingJob], ctx: LocalJobContext
) -> supervisor.SupervisorSpec:
    home = Path(ctx.job_dir)
    return {
        "job_id": plan.id,
        "state_db": str(provider.store.path),
        "steps": [
            {"argv": list(r["argv"]), "env": dict(r["env"]), "cwd": str(r["cwd"])}
            for r in (s.request for s in plan.steps)
        ],
        "rdzv": {"host": ctx.rdzv.host, "port": ctx.rdzv.port} if ctx.rdzv else None,
        "restarts": ctx.restarts,
        "grace": ctx.grace,
        "max_runtime": plan.spec.max_runtime_seconds,
        "log": str(home / "logs" / "job.log"),
        "launched": str(home / supervisor.LAUNCHED_FILE),
    }


def status(provider: LocalProvider, record: JobRecord) -> JobRecord:
    """A job whose supervisor died without recording its end has failed."""
    sup = record.details.get("supervisor")
    if not sup or procs.alive(sup):
        return record
    # Re-read: the supervisor may have recorded the end just before exiting.
    record = provider.store.get_job(record.id)
    if record.state.terminal:
        return record
    procs.kill_job_processes(record.id, grace=0)
    return provider.store.update_job(
        record.id,
        state=JobState.FAILED,
        message="the job's supervisor process died; see supervisor.log in the job dir",
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
            return wait_until(
                lambda: provider.store.get_job(record.id),
                lambda r: r.state.terminal and not procs.alive(sup),
                timeout=grace + 10,
                poll=0.05,
                what=f"the supervisor of job {record.id} to stop it",
                origin=provider.origin,
            )
        except Transient:
            pass  # it did not answer: below
    procs.kill_job_processes(record.id, grace=grace)
    return provider.store.update_job(record.id, state=JobState.CANCELLED, message="cancelled")
