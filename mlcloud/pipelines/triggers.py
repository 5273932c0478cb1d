"""Triggers and the scheduler loop: a pipeline runs again on a schedule, on new data, when an
alias moves, or on a drift alert (``trigger``).

``schedule(file)`` registers a pipeline's triggers with their baselines (now; the data's digest;
the alias's last move). ``tick`` looks at every trigger once: a due one records a *firing*, with
its reason, in the same transaction that moves its trigger's state, under a key unique to the
event (a cron time, the n-th data change, an alias history seq), so a scheduler killed at any
point loses no firing and records none twice. Pending firings then start a run, one at a time
per pipeline (``concurrency`` allows more): firings that arrive while a run is active wait, and
are answered together by the next run (state ``coalesced``). A run the scheduler started whose
runner is gone is started again.

Policies: a schedule missed while the scheduler was down fires **once** on start-up (the latest
missed time; the reason says how many were missed). A data trigger reads the content digest of
its path every ``every``; a changed digest fires once it has stayed the same for ``settle``
(a directory being written fires once, after the writes stop). ``serve`` is the loop: ``mlcloud
scheduler``, and a thread the server can run (``start_thread``).
"""

from __future__ import annotations

import contextlib
import fcntl
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from mlcloud import datadigest, model_registry
from mlcloud.errors import Conflict, MlcloudError, NotFoundLocally, SpecError
from mlcloud.pipelines import launch, runner
from mlcloud.pipelines import spec as pspec
from mlcloud.pipelines.spec import Pipeline, Trigger
from mlcloud.store import Store
from mlcloud.store import pipelines as db
from mlcloud.units import parse_duration

HEAL_AFTER_S = 5.0  # a run this old without a live runner is started again


def baseline(trigger: Trigger, now: float, profiles: Sequence[str | None] = ()) -> dict[str, Any]:
    """What a trigger starts from: nothing before registering fires."""
    if trigger.schedule is not None:
        return {"last": now}
    if trigger.data is not None:
        return {"digest": data_digest(trigger.data, profiles), "n": 0, "checked": now}
    if trigger.model is not None:
        return {"seq": _last_move(trigger.model)[0]}
    return {}


def data_digest(uri: str, profiles: Sequence[str | None] = ()) -> str | None:
    """The content digest of a local file or directory, or of what a bucket or datastore URI
    holds (its objects' names and ETags / generations: nothing is downloaded). ``profiles``:
    the pipeline's, one of which reads an ``azureml://`` URI."""
    if not datadigest.is_remote(uri):
        return datadigest.digest(uri)["digest"]  # type: ignore[no-any-return]
    from mlcloud.pipelines import artifacts

    if not _watched(uri):
        return f"uri:{uri}"  # not watched (schedule warns): never changes
    return artifacts.remote_digest(uri, profiles)


def _watched(uri: str) -> bool:
    from mlcloud.pipelines import artifacts

    return not datadigest.is_remote(uri) or artifacts.scheme(uri) in artifacts.WATCHED


def _profiles(pipeline: Pipeline) -> list[str | None]:
    """The profiles a pipeline uses: its own (``--provider`` at schedule time), its steps'."""
    return [pipeline.provider, *(s.provider for s in pipeline.steps)]


def schedule(
    file: str | Path, provider: str | None = None, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Register (or re-register) the triggers of ``file``; returns the schedule and warnings.
    ``data``: ``file`` as the caller loaded it (a team server is sent it, not the path's file)."""
    if data is None:
        pipeline, data = pspec.load(file)
    else:
        pipeline = pspec.validate(data, f"pipeline file {file}")
    if not pipeline.triggers:
        raise SpecError(
            f"pipeline {pipeline.name} has no triggers",
            hint="add e.g. triggers: [{schedule: '0 3 * * *'}, {data: ./data}]",
        )
    if provider is not None:
        data = {**data, "provider": provider}
    warnings = [
        f"data trigger {t.data}: only local paths, s3://, gs:// and azureml:// are watched"
        for t in pipeline.triggers
        if t.data and not _watched(t.data)
    ]
    now = time.time()
    profiles = [provider, *_profiles(pipeline)]
    states = [(t.kind, baseline(t, now, profiles)) for t in pipeline.triggers]
    with Store.borrowed(None) as store:
        db.put_schedule(store, pipeline.name, str(Path(file).resolve()), data, states)
    return {
        "pipeline": pipeline.name,
        "triggers": [t.model_dump(exclude_defaults=True) for t in pipeline.triggers],
        "warnings": warnings,
    }


def unschedule(name: str) -> bool:
    with Store.borrowed(None) as store:
        return db.unschedule(store, name)


def scheduled() -> list[dict[str, Any]]:
    """Every scheduled pipeline with its triggers' state and last firings."""
    with Store.borrowed(None) as store:
        out = []
        for row in db.schedules(store):
            states = db.trigger_states(store, row["name"])
            fired = db.firings(store, row["name"])[-5:]
            out.append(
                {
                    "name": row["name"],
                    "file": row["file"],
                    "triggers": [
                        {**t, "state": states.get(i)}
                        for i, t in enumerate(row["spec"].get("triggers") or [])
                    ],
                    "last_firings": [f.to_dict() for f in fired],
                }
            )
        return out


def trigger(name: str, reason: str = "manual", detail: str | None = None) -> db.Firing:
    """Fire pipeline ``name`` now (the drift hook: ``reason="drift"``); it runs as soon as no
    other run of it is active. Returns the recorded firing."""
    if not reason.strip():
        raise SpecError("a firing needs a reason", hint="e.g. --reason drift")
    with Store.borrowed(None) as store:
        row = db.schedule(store, name)
        if row is None:
            raise NotFoundLocally(
                f"pipeline {name!r} is not scheduled",
                hint="register it first: mlcloud pipelines schedule FILE",
            )
        text = reason + (f": {detail}" if detail else "")
        key = f"{reason}:{time.time():.6f}:{secrets.token_hex(4)}"
        db.fire(store, name, key, reason, text)
        dispatch(store, row)
        return next(f for f in reversed(db.firings(store, name)) if f.fkey == key)


# ---- one look at every trigger ----------------------------------------------------------------
def tick(store: Store | None = None, now: float | None = None) -> list[db.Firing]:
    """Check every trigger once, start the runs due; returns the firings recorded now."""
    with Store.borrowed(store) as st:
        before = db.last_firing(st)
        for row in db.schedules(st):
            try:
                check(st, row, time.time() if now is None else now)
            except Exception as exc:  # a broken pipeline or an unreachable bucket: the others go on
                runner.log(st, "scheduler", f"{row['name']}: {type(exc).__name__}: {exc}")
            dispatch(st, row)
        return db.firings(st, after=before)


def check(store: Store, row: dict[str, Any], now: float) -> None:
    pipeline = pspec.validate(row["spec"], f"scheduled pipeline {row['name']}")
    states = db.trigger_states(store, pipeline.name)
    for idx, trig in enumerate(pipeline.triggers):
        state = states.get(idx)
        if state is None:
            continue
        if trig.schedule is not None:
            _check_schedule(store, pipeline, idx, trig, state, now)
        elif trig.data is not None:
            _check_data(store, pipeline, idx, trig, state, now)
        elif trig.model is not None:
            _check_model(store, pipeline, idx, trig, state)


def _check_schedule(
    store: Store, p: Pipeline, idx: int, t: Trigger, state: dict[str, Any], now: float
) -> None:
    from croniter import croniter

    assert t.schedule is not None
    zone = ZoneInfo(t.timezone)
    times = croniter(t.schedule, datetime.fromtimestamp(float(state["last"]), zone))
    due = times.get_next(datetime)
    if due.timestamp() > now:
        return
    missed = 0
    while missed < 1000:  # catch-up: only the latest missed time fires
        following = times.get_next(datetime)
        if following.timestamp() > now:
            break
        due, missed = following, missed + 1
    if missed >= 1000:
        due = croniter(t.schedule, datetime.fromtimestamp(now, zone)).get_prev(datetime)
    reason = f"schedule {t.schedule} ({t.timezone}): due {due.isoformat()}"
    if missed:
        reason += (
            f", {missed}{'+' if missed >= 1000 else ''} earlier time(s) missed while "
            "the scheduler was down (fired once)"
        )
    key = f"schedule:{idx}:{int(due.timestamp())}"
    db.fire(store, p.name, key, "schedule", reason, (idx, {"last": due.timestamp()}))


def _check_data(
    store: Store, p: Pipeline, idx: int, t: Trigger, state: dict[str, Any], now: float
) -> None:
    assert t.data is not None
    pending = state.get("pending")
    wait_s = parse_duration(t.settle) if pending else parse_duration(t.every)
    if now - float(state.get("checked", 0)) < wait_s:
        return
    digest = data_digest(t.data, _profiles(p))
    new = {**state, "checked": now}
    if digest == state.get("digest"):
        new.pop("pending", None)
    elif digest != pending:
        new.update(pending=digest, noticed_at=now)  # changed: fire once it stays so
    elif now - float(state.get("noticed_at", now)) >= parse_duration(t.settle):
        n = int(state.get("n", 0)) + 1
        old = str(state.get("digest"))[:12]
        reason = f"data {t.data}: content digest {old}… → {str(digest)[:12]}…"
        fired = {"digest": digest, "n": n, "checked": now, "noticed_at": state.get("noticed_at")}
        db.fire(store, p.name, f"data:{idx}:{n}", "data", reason, (idx, fired))
        return
    db.set_trigger_state(store, p.name, idx, new)


def _check_model(store: Store, p: Pipeline, idx: int, t: Trigger, state: dict[str, Any]) -> None:
    assert t.model is not None
    seq, move = _last_move(t.model, store)
    if seq <= int(state.get("seq", 0)) or move is None:
        return
    reason = f"alias {t.model} moved {move.from_version} → {move.to_version} by {move.by}" + (
        f": {move.reason}" if move.reason else ""
    )
    db.fire(store, p.name, f"model:{idx}:{seq}", "model", reason, (idx, {"seq": seq}))


def _last_move(ref: str, store: Store | None = None) -> tuple[int, Any]:
    """(seq, move) of the alias's last real move (a note moves nothing), (0, None) if none."""
    name, _, alias = ref.partition("@")
    with Store.borrowed(store) as st:
        try:
            history = model_registry.history(st, name)
        except MlcloudError:
            return 0, None
    moves = [m for m in history if m.alias == alias and m.from_version != m.to_version]
    return (moves[-1].seq, moves[-1]) if moves else (0, None)


# ---- starting runs for firings ------------------------------------------------------------------
def dispatch(store: Store, row: dict[str, Any]) -> None:
    """Start runs for pending firings while the pipeline's concurrency allows; restart a run
    whose runner died."""
    name = row["name"]
    active = db.active_runs(store, name)
    for run in active:
        if time.time() - run.updated_at > HEAL_AFTER_S and not runner.runner_alive(store, run.id):
            runner.log(store, run.id, "runner gone: started again by the scheduler")
            db.update_run(store, run.id, message="runner restarted by the scheduler")
            launch.spawn(store, run.id)
    pending = db.firings(store, name, state="pending")
    concurrency = int(row["spec"].get("concurrency") or 1)
    free = concurrency - len(active)
    while pending and free > 0:
        first = pending.pop(0)
        try:
            run = launch.start(
                store,
                row["spec"],
                row["spec"].get("provider"),
                reason=first.reason,
                firing=first.id,
            )
        except Conflict:  # another scheduler (a server's other worker) answered it
            return
        runner.log(store, run.id, f"started by firing {first.id} ({first.kind})")
        free -= 1
        if free == 0 and pending:
            db.coalesce(store, [f.id for f in pending], run.id)
            pending = []


# ---- the loop -----------------------------------------------------------------------------------
def serve(
    stop: threading.Event | None = None, interval: float = 1.0, *, standby: bool = False
) -> None:
    """Tick every ``interval`` seconds until ``stop`` is set; one scheduler per store home.
    ``standby``: while another scheduler runs, wait to take over (a server's workers) instead
    of refusing."""
    stop = stop or threading.Event()
    with Store.borrowed(None) as store, _scheduler_lock(store, stop if standby else None) as held:
        if not held:
            if standby:
                return  # stopped while standing by
            raise Conflict(
                "another scheduler is running on this store",
                provider_type="pipelines",
                hint="one is enough",
            )
        while not stop.is_set():
            try:
                tick(store)
            except Exception as exc:  # the store went away for a moment: the loop lives on
                runner.log(store, "scheduler", f"tick failed: {type(exc).__name__}: {exc}")
            stop.wait(interval)


def start_thread(interval: float = 1.0) -> tuple[threading.Thread, threading.Event]:
    """The scheduler as a daemon thread (``mlcloud server`` runs it); set the event to stop."""
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(stop, interval),
        kwargs={"standby": True},
        name="mlcloud-scheduler",
        daemon=True,
    )
    thread.start()
    return thread, stop


@contextlib.contextmanager
def _scheduler_lock(store: Store, standby: threading.Event | None) -> Iterator[bool]:
    """The scheduler's lock; with ``standby``, wait for it until that event is set."""
    with open(runner.pipelines_dir(store) / "scheduler.lock", "w") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if standby is None or standby.wait(1.0):
                    yield False
                    return
        yield True
