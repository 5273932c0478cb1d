"""Pipelines (``pipeline.yaml``): a DAG of job, condition, register and deploy steps, run by
mlcloud on any provider, resumable, each step cached by its inputs' digests, and triggered by a
schedule, new data, an alias move or a drift alert (DESIGN.md, "The MLOps loop").

``run`` records the run and its steps in the store and starts a detached runner
(:mod:`mlcloud.pipelines.runner`); ``resume`` starts a new runner for what did not succeed;
``cancel`` asks the runner to stop and cancels the running jobs. Triggers live in
:mod:`mlcloud.pipelines.triggers` (the scheduler loop, ``trigger``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mlcloud import api
from mlcloud.errors import Conflict, NotFoundLocally, SpecError
from mlcloud.pipelines import runner
from mlcloud.pipelines import spec as pspec
from mlcloud.pipelines.dryrun import plan
from mlcloud.pipelines.launch import spawn, start
from mlcloud.pipelines.spec import Pipeline, json_schema, load
from mlcloud.pipelines.triggers import (
    schedule,
    scheduled,
    serve,
    start_thread,
    tick,
    trigger,
    unschedule,
)
from mlcloud.store import Store
from mlcloud.store import pipelines as db
from mlcloud.store.pipelines import RunRow

__all__ = [
    "Pipeline",
    "RunRow",
    "cancel",
    "get",
    "json_schema",
    "load",
    "logs",
    "plan",
    "resume",
    "run",
    "runs",
    "schedule",
    "scheduled",
    "serve",
    "spawn",
    "start",
    "start_thread",
    "tick",
    "trigger",
    "unschedule",
    "wait",
]

FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


def run(
    file: str | Path | Mapping[str, Any],
    provider: str | None = None,
    overrides: Sequence[str] = (),
    *,
    no_cache: bool = False,
    reason: str = "manual",
) -> RunRow:
    """Start a run of ``file`` (detached) and return its record. ``file`` may also be the
    pipeline as :func:`load` returned it (what a team server is sent: read on the caller's
    machine, its relative paths resolved there)."""
    if isinstance(file, Mapping):
        data = pspec.apply_params(dict(file), overrides)
    else:
        _, data = load(file, overrides)
    store = Store.open()
    try:
        return start(store, data, provider, no_cache=no_cache, reason=reason)
    finally:
        store.close()


def get(run_id: str) -> RunRow:
    """The run with its steps (a run whose runner died says so in its message)."""
    store = Store.open()
    try:
        row = db.get_run(store, run_id)
        # (a fresh run's runner may still be starting)
        fresh = time.time() - row.updated_at <= 5
        if row.state in db.RUN_ACTIVE and not fresh and not runner.runner_alive(store, run_id):
            row.message = f"its runner is gone: mlcloud pipelines resume {run_id}"
        return row
    finally:
        store.close()


def runs(pipeline: str | None = None, limit: int = 50) -> list[RunRow]:
    store = Store.open()
    try:
        return db.list_runs(store, pipeline, limit)
    finally:
        store.close()


def wait(run_id: str, timeout: float | None = None, poll: float = 0.1) -> RunRow:
    """Block until the run ends (``Conflict`` after ``timeout``: it keeps running)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        row = get(run_id)
        if row.state in FINAL:
            return row
        if deadline is not None and time.monotonic() > deadline:
            raise Conflict(
                f"run {run_id} still {row.state} after {timeout:.0f}s",
                provider_type="pipelines",
                code="WaitTimeout",
                hint=f"it keeps running: mlcloud pipelines show {run_id}",
            )
        time.sleep(poll)


def resume(run_id: str) -> RunRow:
    """Run again what did not succeed (FAILED, BLOCKED, CANCELLED, never started); a step whose
    job is still running is adopted. Refused while the run's runner is alive."""
    store = Store.open()
    try:
        row = db.get_run(store, run_id)
        if runner.runner_alive(store, run_id):
            raise Conflict(
                f"run {run_id} is running",
                provider_type="pipelines",
                hint=f"follow it: mlcloud pipelines show {run_id}",
            )
        if row.state == "SUCCEEDED":
            return row
        for step in row.steps:
            if step.state in runner.NOT_RUN:
                db.update_step(
                    store,
                    run_id,
                    step.step,
                    state="WAITING",
                    job_id=None,
                    message=None,
                    started_at=None,
                    ended_at=None,
                )
        db.update_run(
            store, run_id, state="PENDING", cancel_requested=0, message=None, ended_at=None
        )
        runner.log(store, run_id, "resumed")
        spawn(store, run_id)
        return db.get_run(store, run_id)
    finally:
        store.close()


def cancel(run_id: str) -> RunRow:
    """Stop the run: no new step starts, running jobs are cancelled (idempotent)."""
    store = Store.open()
    try:
        row = db.get_run(store, run_id)
        if row.state in FINAL:
            return row
        db.update_run(store, run_id, cancel_requested=1)
        for step in row.steps:
            if step.state == "RUNNING" and step.job_id:
                with contextlib.suppress(NotFoundLocally):  # recorded, not sent yet
                    api.job(step.job_id).cancel()
        if not runner.runner_alive(store, run_id):  # nobody will record the end: do it here
            for step in row.steps:
                if step.state in ("WAITING", "RUNNING"):
                    db.update_step(
                        store,
                        run_id,
                        step.step,
                        state="CANCELLED",
                        message="the run was cancelled",
                        ended_at=time.time(),
                    )
            db.update_run(
                store, run_id, state="CANCELLED", message="cancelled", ended_at=time.time()
            )
        runner.log(store, run_id, "cancel requested")
        return db.get_run(store, run_id)
    finally:
        store.close()


def logs(run_id: str, step: str | None = None) -> Iterator[str]:
    """The runner's log, or one step's job log (``step``)."""
    row = get(run_id)
    if step is None:
        path = runner.pipelines_dir(Store.open()) / f"{run_id}.log"
        yield from path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return
    found = next((s for s in row.steps if s.step == step), None)
    if found is None:
        raise SpecError(
            f"run {run_id} has no step {step!r}",
            hint=f"its steps: {', '.join(s.step for s in row.steps)}",
        )
    if not found.job_id:
        yield f"step {step} ({found.kind}) is {found.state}: {found.message or 'no job log'}"
        return
    yield from api.job(found.job_id).logs()


def describe(row: RunRow) -> dict[str, Any]:
    """The run as JSON, its steps in DAG order with their upstream steps and durations."""
    pipeline = pspec.validate(row.spec, "pipeline")
    graph = pspec.edges(pipeline)
    by_name = {s.step: s for s in row.steps}
    steps = []
    for name in pspec.order(pipeline):
        s = by_name[name]
        end = s.ended_at or (time.time() if s.started_at else None)
        steps.append(
            {
                **s.to_dict(),
                "needs": sorted(graph[name]),
                "duration_s": round(end - s.started_at, 3) if end and s.started_at else None,
            }
        )
    return {**row.to_dict(), "steps": steps}


def dumps(row: RunRow) -> str:
    return json.dumps(describe(row), default=str)
