"""The runner of one pipeline run: ``python -m mlcloud.pipelines run RUN_ID``.

Started detached (its own session: it outlives the CLI), it holds the run's lock
(``$MLCLOUD_HOME/pipelines/RUN.lock``, flock: released by the kernel when the process dies, so
a second runner of the same run refuses and a resumed one knows the first is gone). It walks the
DAG from the store: a step whose upstream steps all succeeded starts (independent steps in
parallel, each in a thread); a failed step blocks its dependents (BLOCKED, naming it); a false
condition skips its dependents (SKIPPED). Everything is in the store, so a killed runner is
simply started again (``resume``) and carries on, adopting the jobs its steps had sent.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from mlcloud.errors import MlcloudError
from mlcloud.pipelines import spec as pspec
from mlcloud.pipelines import steps as run_steps
from mlcloud.pipelines.spec import Pipeline, Step
from mlcloud.store import Store
from mlcloud.store import pipelines as db

# step states: WAITING → RUNNING → SUCCEEDED | FAILED | CANCELLED; or SKIPPED (a false
# condition upstream) / BLOCKED (an upstream step failed or was cancelled)
NOT_RUN = ("FAILED", "BLOCKED", "CANCELLED")
MAX_PARALLEL = 8


def pipelines_dir(store: Store) -> Path:
    path = store.home / "pipelines"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


@contextlib.contextmanager
def run_lock(store: Store, run_id: str, patience: float = 0.0) -> Iterator[bool]:
    """Hold the run's lock (True), or learn that a live runner holds it (False). ``patience``:
    seconds to keep trying (someone asking :func:`runner_alive` holds it for an instant)."""
    deadline = time.monotonic() + patience
    with open(pipelines_dir(store) / f"{run_id}.lock", "w") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.02)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def runner_alive(store: Store, run_id: str) -> bool:
    with run_lock(store, run_id) as held:
        return not held


def log(store: Store, run_id: str, line: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    with open(pipelines_dir(store) / f"{run_id}.log", "a", encoding="utf-8") as fh:
        fh.write(f"{stamp} {line}\n")


def execute(run_id: str) -> str:
    """Run ``run_id`` to its end (the runner process's body); returns the run's final state."""
    store = Store.open()
    with run_lock(store, run_id, patience=3.0) as held:
        if not held:
            return "RUNNING"  # another runner has it
        run = db.get_run(store, run_id)
        if run.state not in db.RUN_ACTIVE:
            return run.state
        db.update_run(store, run_id, state="RUNNING", runner={"pid": os.getpid()})
        log(store, run_id, f"runner {os.getpid()} started ({run.reason})")
        try:
            state, message = _walk(store, run)
        except Exception as exc:  # a bug must still end the run, saying what happened
            state, message = "FAILED", f"runner failed: {type(exc).__name__}: {exc}"
        db.update_run(store, run_id, state=state, message=message, ended_at=time.time())
        log(store, run_id, f"run {state}" + (f": {message}" if message else ""))
        return state


def _walk(store: Store, run: db.RunRow) -> tuple[str, str | None]:
    pipeline = pspec.validate(run.spec, f"pipeline of run {run.id}")
    graph = pspec.edges(pipeline)
    futures: dict[Future[None], str] = {}
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
        while True:
            rows = {s.step: s for s in db.steps_of(store, run.id)}
            cancelled = db.get_run(store, run.id).cancel_requested
            busy, changed = set(futures.values()), False
            for step in pipeline.steps:
                row = rows[step.name]
                if step.name in busy or row.state not in ("WAITING", "RUNNING"):
                    continue
                ready = _gate(store, run.id, step, row, rows, graph[step.name], cancelled)
                if ready:
                    future = pool.submit(_one, run, pipeline, step.name, graph)
                    futures[future] = step.name
                changed = changed or ready is None
            if not futures:
                if changed:
                    continue  # a step just blocked or skipped: its dependents follow
                break
            done, _ = wait(list(futures), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                name = futures.pop(future)
                if future.exception() is not None:  # _one could not even record its end
                    _crashed(store, run.id, name, future.exception())
    return _outcome(db.steps_of(store, run.id), db.get_run(store, run.id).cancel_requested)


def _gate(
    store: Store,
    run_id: str,
    step: Step,
    row: db.StepRow,
    rows: dict[str, db.StepRow],
    ups: set[str],
    cancelled: bool,
) -> bool | None:
    """Whether ``step`` may start now; None: it never will (marked BLOCKED / SKIPPED /
    CANCELLED here)."""
    if row.state == "RUNNING":
        return True  # a previous runner started it: adopt
    failed = sorted(u for u in ups if rows[u].state in NOT_RUN)
    skipped = sorted(u for u in ups if rows[u].state == "SKIPPED" or _false(rows[u]))
    if cancelled:
        _end(store, run_id, step.name, "CANCELLED", "the run was cancelled")
    elif failed:
        _end(store, run_id, step.name, "BLOCKED", f"not run: {', '.join(failed)} did not succeed")
    elif skipped:
        _end(
            store,
            run_id,
            step.name,
            "SKIPPED",
            f"skipped: {', '.join(skipped)} "
            + ("is false" if all(_false(rows[u]) for u in skipped) else "was skipped"),
        )
    else:
        return all(rows[u].state == "SUCCEEDED" for u in ups)
    return None


def _crashed(store: Store, run_id: str, step: str, exc: BaseException | None) -> None:
    """A step whose thread failed outside its own error handling ends FAILED (never retried
    in a loop); if even that cannot be written, the run ends with the runner's error."""
    _end(store, run_id, step, "FAILED", f"runner error: {type(exc).__name__}: {exc}")


def _false(row: db.StepRow) -> bool:
    return row.kind == "condition" and row.state == "SUCCEEDED" and not row.outputs.get("value")


def _end(store: Store, run_id: str, step: str, state: str, message: str) -> None:
    db.update_step(store, run_id, step, state=state, message=message, ended_at=time.time())
    log(store, run_id, f"{step}: {state} {message}")


def _outcome(rows: list[db.StepRow], cancelled: bool) -> tuple[str, str | None]:
    failed = [r for r in rows if r.state == "FAILED"]
    if failed:
        first = failed[0]
        return "FAILED", f"step {first.step} failed: {first.message}"
    if cancelled or any(r.state == "CANCELLED" for r in rows):
        return "CANCELLED", "cancelled"
    if any(r.state == "BLOCKED" for r in rows):
        return "FAILED", "steps were blocked"
    gates = [r.step for r in rows if _false(r)]
    return "SUCCEEDED", (f"stopped at {', '.join(gates)} (condition false)" if gates else None)


def _one(run: db.RunRow, pipeline: Pipeline, name: str, graph: dict[str, set[str]]) -> None:
    """One step, in its own thread with its own store connection; its end goes to the store."""
    store = Store.open()
    try:
        step = pipeline.step(name)
        rows = {s.step: s for s in db.steps_of(store, run.id)}
        row = rows[name]
        outputs = {
            u: rows[u].outputs for u in _upstream(graph, name) if rows[u].state == "SUCCEEDED"
        }
        ctx = run_steps.Context(
            run.id,
            pipeline,
            outputs,
            run.provider,
            cancelled=lambda: db.get_run(store, run.id).cancel_requested,
            home=store.home,
        )
        if row.state != "RUNNING":
            db.update_step(store, run.id, name, state="RUNNING", started_at=time.time())
            log(store, run.id, f"{name}: RUNNING")
        try:
            state, result, message, cached = _dispatch(ctx, step, row, store, run.no_cache)
        except MlcloudError as exc:
            hint = f" (hint: {exc.hint})" if exc.hint else ""
            state = "CANCELLED" if ctx.cancelled() else "FAILED"
            result, message, cached = {}, f"{exc.message}{hint}", False
        except Exception as exc:
            state, result, message, cached = (
                "FAILED",
                {},
                f"unexpected {type(exc).__name__}: {exc}",
                False,
            )
        db.update_step(
            store,
            run.id,
            name,
            state=state,
            outputs=result,
            message=message,
            cached=cached,
            ended_at=time.time(),
        )
        log(
            store,
            run.id,
            f"{name}: {state}"
            + (" (cached)" if cached else "")
            + (f" {message}" if message else ""),
        )
    finally:
        store.close()


def _upstream(graph: dict[str, set[str]], name: str) -> set[str]:
    """Every step ``name`` depends on, directly or not (a condition may read any of them)."""
    seen: set[str] = set()
    todo = list(graph[name])
    while todo:
        up = todo.pop()
        if up not in seen:
            seen.add(up)
            todo.extend(graph[up])
    return seen


def _dispatch(
    ctx: run_steps.Context, step: Step, row: db.StepRow, store: Store, no_cache: bool
) -> tuple[str, dict[str, Any], str | None, bool]:
    """(state, outputs, message, cached) of one step."""
    if step.kind == "condition":
        value, message = run_steps.run_condition(ctx, step)
        return "SUCCEEDED", {"value": value}, message, False
    digest, valid = _cache_key(ctx, step, row, store)
    db.update_step(store, ctx.run_id, step.name, digest=digest)
    hit = None if (no_cache or not step.cache or row.job_id) else db.cached(store, digest)
    if hit is not None and valid(hit):
        return "SUCCEEDED", hit, f"cached from run {hit.get('_run')}", True
    if step.kind == "job":
        result = run_steps.run_job(ctx, step, row, store)
    elif step.kind == "register":
        result = run_steps.run_register(ctx, step, run_steps.register_source(ctx, step), store)
    else:
        model, _ = run_steps.deploy_model(ctx, step, store)
        result = run_steps.run_deploy(ctx, step, model)
    result["_run"] = ctx.run_id
    db.remember(store, digest, step.kind, result, ctx.run_id, step.name)
    return "SUCCEEDED", result, _summary(step.kind, result), False


def _cache_key(
    ctx: run_steps.Context, step: Step, row: db.StepRow, store: Store
) -> tuple[str, Any]:
    provider = ctx.provider_of(step)
    if step.kind == "job":
        digest = run_steps.job_digest(run_steps.job_spec(ctx, step), provider, store.home)
        return digest, run_steps.job_cache_valid
    if step.kind == "register":
        assert step.register_ is not None
        source = run_steps.register_source(ctx, step)
        digest = run_steps.digest_of(
            "register",
            {"spec": step.register_.model_dump(), "source": source, "provider": step.provider},
        )
        return digest, lambda out: run_steps.register_cache_valid(out, store)
    assert step.deploy is not None
    model, content = run_steps.deploy_model(ctx, step, store)
    digest = run_steps.digest_of(
        "deploy",
        {
            "spec": step.deploy.model_dump(),
            "model": model,
            "content": content,
            "provider": provider,
        },
    )
    return digest, lambda out: run_steps.deploy_cache_valid(out, content, provider)


def _summary(kind: str, result: dict[str, Any]) -> str | None:
    if kind == "job":
        metrics = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in sorted(result.get("metrics", {}).items())
        )
        return f"job {result.get('job')}" + (f" ({metrics})" if metrics else "")
    if kind == "register":
        return f"registered {result.get('ref')}"
    if result.get("rollout"):
        return f"canary rollout {result['rollout']} of {result.get('endpoint')} started"
    return f"endpoint {result.get('endpoint')} at {result.get('url')}"
