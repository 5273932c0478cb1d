"""Scheduled drift checks and the drift trigger: a deployment with
``monitor: {every: 1h, on_drift: {pipeline: NAME}}`` is checked every ``every`` over the last
``window`` (default 24h) and, on drift, fires ``pipelines.trigger(NAME, reason="drift")`` with
the drifted features as the detail. One drift episode (drifted checks in a row, on one served
model) fires once; a drift within ``cooldown`` (default 24h) of the last firing waits for it to
pass, the retrained model being on its way (:func:`mlcloud.store.monitor.decide`).

The scheduler loop (``mlcloud scheduler``, the server's thread) calls :func:`tick` each turn;
:func:`due_checks` and :func:`run_check` are its two halves.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mlcloud import pipelines
from mlcloud.errors import MlcloudError
from mlcloud.monitor import check
from mlcloud.records import EndpointRecord
from mlcloud.store import Store
from mlcloud.store import monitor as db
from mlcloud.units import parse_duration

DEFAULT_COOLDOWN_S = 24 * 3600


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
    )


def due_checks(now: float | None = None, store: Store | None = None) -> list[EndpointRecord]:
    """The monitored endpoints whose check is due at ``now`` (not yet claimed)."""
    now = time.time() if now is None else now
    st = store or Store.open()
    try:
        due = []
        for record in st.list_endpoints():
            sched = schedule_of(record)
            if sched is None:
                continue
            seen = db.state(st, record.name, record.provider)
            if seen is None or seen.last_check is None or now - seen.last_check >= sched.every_s:
                due.append(record)
        return due
    finally:
        if store is None:
            st.close()


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
        result = check.check_record(record, store, window_s=sched.window_s, now=now)
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
    st = store or Store.open()
    try:
        return [run_check(record, st, now) for record in due_checks(now, st)]
    finally:
        if store is None:
            st.close()
