"""Drift monitoring in the state store (migration ``0006_monitor.sql``).

``monitor_state`` holds, per endpoint, when it was last checked and the drift episode it is in;
``monitor_checks`` every scheduled check's outcome. Claiming a due check and deciding whether a
drift fires are each one transaction that reads the row it writes, so two schedulers (the CLI's
and the server's) never run the same check twice nor both fire for one episode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlcloud.store import Store

#: what a check did: fired the pipeline; drift already answered in this episode; drift during
#: the cool-down after the last firing; drift with no pipeline to fire; no drift; failed
ACTIONS = ("fired", "in-episode", "cooldown", "drift", "none", "error")


@dataclass
class MonitorState:
    endpoint: str
    provider: str
    last_check: float | None = None
    model: str | None = None
    drifting: bool = False
    episode_started: float | None = None
    last_fired: float | None = None
    fired_pipeline: str | None = None
    fired_id: str | None = None


def state(store: Store, endpoint: str, provider: str) -> MonitorState | None:
    row = store._db.execute(
        "SELECT * FROM monitor_state WHERE endpoint = ? AND provider = ?", (endpoint, provider)
    ).fetchone()
    return _state(row) if row is not None else None


def _state(row: Any) -> MonitorState:
    return MonitorState(
        endpoint=row["endpoint"], provider=row["provider"], last_check=row["last_check"],
        model=row["model"], drifting=bool(row["drifting"]),
        episode_started=row["episode_started"], last_fired=row["last_fired"],
        fired_pipeline=row["fired_pipeline"], fired_id=row["fired_id"],
    )  # fmt: skip


def _ensure(db: Any, endpoint: str, provider: str) -> MonitorState:
    db.execute(
        "INSERT INTO monitor_state (endpoint, provider, drifting) VALUES (?, ?, 0) "
        "ON CONFLICT (endpoint, provider) DO NOTHING",
        (endpoint, provider),
    )
    row = db.execute(
        "SELECT * FROM monitor_state WHERE endpoint = ? AND provider = ?", (endpoint, provider)
    ).fetchone()
    return _state(row)


def claim_check(store: Store, endpoint: str, provider: str, now: float, every_s: float) -> bool:
    """Take the check due at ``now`` (True), or learn that it is not due / already taken."""
    with store._tx() as db:
        current = _ensure(db, endpoint, provider)
        if current.last_check is not None and now - current.last_check < every_s:
            return False
        db.execute(
            "UPDATE monitor_state SET last_check = ? WHERE endpoint = ? AND provider = ?",
            (now, endpoint, provider),
        )
        return True


def decide(
    store: Store,
    endpoint: str,
    provider: str,
    *,
    model: str,
    drifted: list[str],
    rows: int,
    now: float,
    cooldown_s: float,
    pipeline: str | None,
) -> str:
    """Record a check's outcome and say what to do (one of :data:`ACTIONS`): ``fired`` means
    the caller fires ``pipeline`` now. An episode is a run of drifted checks on one model; it
    ends at a check without drift or when the endpoint serves another model (a new baseline).
    A drift within ``cooldown_s`` of the last firing waits (the retrained model may still be
    on its way); the first drifted check after it fires."""
    with store._tx() as db:
        current = _ensure(db, endpoint, provider)
        same_episode = current.drifting and current.model == model
        if not drifted:
            action, drifting, started = "none", False, None
        elif same_episode:
            action, drifting, started = "in-episode", True, current.episode_started
        elif current.last_fired is not None and now - current.last_fired < cooldown_s:
            action, drifting, started = "cooldown", False, None
        else:
            action, drifting, started = ("fired" if pipeline else "drift"), True, now
        fired = action == "fired"
        db.execute(
            "UPDATE monitor_state SET model = ?, drifting = ?, episode_started = ?, "
            "last_fired = ?, fired_pipeline = ?, fired_id = ? WHERE endpoint = ? AND provider = ?",
            (model, int(drifting), started, now if fired else current.last_fired,
             pipeline if fired else current.fired_pipeline,
             None if fired else current.fired_id, endpoint, provider),
        )  # fmt: skip
        _log(db, endpoint, provider, now, model, rows, drifted, action, None)
        return action


def fired(store: Store, endpoint: str, provider: str, firing_id: str) -> None:
    """Note the firing the episode started (after ``pipelines.trigger`` answered)."""
    with store._tx() as db:
        db.execute(
            "UPDATE monitor_state SET fired_id = ? WHERE endpoint = ? AND provider = ?",
            (firing_id, endpoint, provider),
        )


def fire_failed(store: Store, endpoint: str, provider: str, now: float, message: str) -> None:
    """The trigger failed: the episode is not answered, so the next check fires again."""
    with store._tx() as db:
        db.execute(
            "UPDATE monitor_state SET drifting = 0, episode_started = NULL, last_fired = NULL "
            "WHERE endpoint = ? AND provider = ? AND last_fired = ?",
            (endpoint, provider, now),
        )
        _log(db, endpoint, provider, now, None, 0, [], "error", message)


def failed(store: Store, endpoint: str, provider: str, now: float, message: str) -> None:
    with store._tx() as db:
        _log(db, endpoint, provider, now, None, 0, [], "error", message)


def _log(db: Any, endpoint: str, provider: str, now: float, model: str | None, rows: int,
         drifted: list[str], action: str, message: str | None) -> None:  # fmt: skip
    db.execute(
        "INSERT INTO monitor_checks (endpoint, provider, checked_at, model, rows, drifted, "
        "action, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (endpoint, provider, now, model, rows, json.dumps(drifted), action, message),
    )


def checks(store: Store, endpoint: str, limit: int = 50) -> list[dict[str, Any]]:
    """The endpoint's most recent checks, newest first."""
    rows = store._db.execute(
        "SELECT * FROM monitor_checks WHERE endpoint = ? ORDER BY id DESC LIMIT ?",
        (endpoint, int(limit)),
    ).fetchall()
    return [
        {"endpoint": r["endpoint"], "provider": r["provider"], "checked_at": r["checked_at"],
         "model": r["model"], "rows": r["rows"], "drifted": json.loads(r["drifted"]),
         "action": r["action"], "message": r["message"]}
        for r in rows
    ]  # fmt: skip
