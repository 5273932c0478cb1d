"""Scheduled drift checks and the drift trigger: a deployment with
``monitor: {every: 1h, on_drift: {pipeline: NAME}}`` is checked every ``every`` over the last
``window`` (default 24h) and, on drift, fires ``pipelines.trigger(NAME, reason="drift")`` with
the drifted features as the detail. One drift episode (drifted checks in a row, on one served
model) fires once; a drift within ``cooldown`` (default 24h) of the last firing waits for it to
pass, the retrained model being on its way (:func:`mlcloud.store.monitor.decide`).

:func:`tick` runs the due checks once (:func:`due_checks` and :func:`run_check` are its two
halves); :func:`serve` / :func:`start_thread` loop on it, beside the pipelines' scheduler
(``mlcloud scheduler``, the server). Each check is claimed in the store, so any number of
loops may run: a check runs once.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mlcloud import pipelines
from mlcloud.errors import MlcloudError
from mlcloud.monitor import check, drift
from mlcloud.records import EndpointRecord
from mlcloud.store import Store
from mlcloud.store import monitor as db
from mlcloud.units import parse_duration

DEFAULT_COOLDOWN_S = 24 * 3600
logger = logging.getLogger("mlcloud.monitor")


@dataclass
class CheckOutcome:
    endpoint: str
    provider: str
    action: str  # one of mlcloud.store.monitor.ACTIONS
    drifted: list[str] = field(default_factory=list)
    rows: int = 0
    pipeline: str | None = None
    firing: int | None = None
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Schedule:
    every_s: float
    window_s: float
    cooldown_s: float
    pipeline: str | None
    thresholds: dict[str, float] = field(default_factory=dict)


def schedule_of(record: EndpointRecord) -> Schedule | None:
    """The ``monitor:`` section of the endpoint's deployment, or None when it has none."""
    spec = (record.spec or {}).get("monitor")
    if not isinstance(spec, dict):
        return None
    every = parse_duration(spec.get("every", "1h"))
    on_drift = spec.get("on_drift") or {}
    return Schedule(
        every_s=every,
        window_s=parse_duration(spec.get("window") or check.DEFAULT_WINDOW_S),
        cooldown_s=parse_duration(spec.get("cooldown") or DEFAULT_COOLDOWN_S),
        pipeline=on_drift.get("pipeline") if isinstance(on_drift, dict) else None,
        thresholds={str(k): float(v) for k, v in (spec.get("thresholds") or {}).items()},
    )


def due_checks(now: float | None = None, store: Store | None = None) -> list[EndpointRecord]:
    """The monitored endpoints whose check is due at ``now`` (not yet claimed)."""
    now = time.time() if now is None else now
    with Store.borrowed(store) as st:
        due = []
        for record in st.list_endpoints():
            sched = schedule_of(record)
            if sched is None:
                continue
            seen = db.state(st, record.name, record.provider)
            if seen is None or seen.last_check is None or now - seen.last_check >= sched.every_s:
                due.append(record)
        return due


def run_check(record: EndpointRecord, store: Store, now: float | None = None) -> CheckOutcome:
    """Claim and run the endpoint's due check; fire its pipeline when the drift starts an
    episode. ``action`` is ``skipped`` when another scheduler took this check."""
    now = time.time() if now is None else now
    sched = schedule_of(record)
    out = CheckOutcome(record.name, record.provider, "skipped")
    if sched is None or not db.claim_check(store, record.name, record.provider, now,
                                           sched.every_s):  # fmt: skip
        return out
    out.pipeline = sched.pipeline
    try:
        config = drift.DriftConfig(thresholds=sched.thresholds)
        result = check.check_record(record, store, window_s=sched.window_s, config=config, now=now)
    except MlcloudError as exc:
        db.failed(store, record.name, record.provider, now, exc.message)
        out.action, out.message = "error", exc.message
        return out
    out.drifted, out.rows = result.drifted, result.rows
    out.action = db.decide(
        store, record.name, record.provider, model=result.baseline, drifted=result.drifted,
        rows=result.rows, now=now, cooldown_s=sched.cooldown_s, pipeline=sched.pipeline,
    )  # fmt: skip
    if out.action == "fired" and sched.pipeline:
        _fire(store, out, sched.pipeline, now)
    return out


def _fire(store: Store, out: CheckOutcome, pipeline: str, now: float) -> None:
    detail = f"endpoint {out.endpoint}: drifted {', '.join(out.drifted)}"
    try:
        firing = pipelines.trigger(pipeline, reason="drift", detail=detail)
    except MlcloudError as exc:
        db.fire_failed(store, out.endpoint, out.provider, now, exc.message)
        out.action, out.message = "error", f"firing {pipeline} failed: {exc.message}"
        return
    out.firing = firing.id
    db.fired(store, out.endpoint, out.provider, str(firing.id))


def tick(now: float | None = None, store: Store | None = None) -> list[CheckOutcome]:
    """Run every due check once (one broken endpoint does not stop the others)."""
    now = time.time() if now is None else now
    with Store.borrowed(store) as st:
        outcomes = []
        for record in due_checks(now, st):
            try:
                outcomes.append(run_check(record, st, now))
            except ValueError as exc:  # a monitor section mlcloud cannot read (a bad duration)
                outcomes.append(
                    CheckOutcome(record.name, record.provider, "error", message=str(exc))
                )
        return outcomes


def history(endpoint: str, limit: int = 50) -> list[dict[str, Any]]:
    """The endpoint's scheduled checks, newest first: when, rows, drifted features, action."""
    store = Store.open()
    try:
        return db.checks(store, endpoint, limit)
    finally:
        store.close()


def serve(stop: threading.Event | None = None, interval: float = 30.0) -> None:
    """Tick every ``interval`` seconds until ``stop`` is set."""
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            for outcome in tick():
                if outcome.action in ("fired", "error"):
                    logger.warning("drift check %s: %s %s", outcome.endpoint, outcome.action,
                                   outcome.message or ", ".join(outcome.drifted))  # fmt: skip
        except Exception:  # a bad spec or a store hiccup must not end the loop
            logger.exception("drift checks failed; retrying in %.0f s", interval)
        stop.wait(interval)


def start_thread(interval: float = 30.0) -> tuple[threading.Thread, threading.Event]:
    """:func:`serve` as a daemon thread; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(stop, interval), name="mlcloud-monitor",
                              daemon=True)  # fmt: skip
    thread.start()
    return thread, stop
