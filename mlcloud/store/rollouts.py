"""Canary rollouts in the state store (migration ``0004_rollouts.sql``).

A rollout row holds everything its controller needs to resume after a restart: the step it is
on, when that step began, the canary's counters at that moment (``baseline``), the last check's
numbers. Every decision (start, step, promote, roll back, abort) is a row of
``rollout_decisions`` with the reason and the numbers it was taken on. A state change and its
decision are written in one transaction; ``transition`` refuses a change from a state the row
is no longer in, so two controllers can never both act on one step.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFoundLocally

if TYPE_CHECKING:
    from mlcloud.store import Store

#: states a controller still acts on; the rest are final
ACTIVE = ("starting", "baking")
FINAL = ("promoted", "rolled_back", "aborted", "failed")


@dataclass
class RolloutRow:
    id: int
    endpoint: str
    provider: str
    model: str
    canary: int
    steps: list[int]
    step: int
    bake_s: float
    gate: str
    min_requests: int
    state: str
    created_at: float
    updated_at: float
    model_uri: str | None = None
    registry_name: str | None = None
    registry_version: str | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    step_started: float | None = None
    baseline: dict[str, Any] | None = None
    last_check: dict[str, Any] | None = None
    controller: dict[str, Any] | None = None
    message: str | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def weight(self) -> int:
        """The canary's weight at the current step."""
        return self.steps[min(self.step, len(self.steps) - 1)]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["id"] = f"r-{self.id}"
        return out


_JSON = ("steps", "baseline", "last_check", "controller")
_COLUMNS = (
    "endpoint", "provider", "model", "model_uri", "registry_name", "registry_version", "canary",
    "steps", "step", "bake_s", "gate", "min_requests", "state", "stable_version",
    "canary_version", "step_started", "baseline", "last_check", "controller", "message",
)  # fmt: skip


def _encode(column: str, value: Any) -> Any:
    return json.dumps(value) if column in _JSON and value is not None else value


def create(store: Store, row: RolloutRow, reason: str) -> RolloutRow:
    """Insert ``row`` (its id is assigned) with its ``start`` decision."""
    now = time.time()
    values = [_encode(c, getattr(row, c)) for c in _COLUMNS]
    with store._tx() as db:
        got = db.execute(
            f"INSERT INTO rollouts ({', '.join(_COLUMNS)}, created_at, updated_at) "  # noqa: S608
            f"VALUES ({', '.join('?' * (len(_COLUMNS) + 2))}) RETURNING id",
            (*values, now, now),
        ).fetchone()
        row.id = int(got["id"])
        _decide(db, row.id, now, "start", reason, {"steps": row.steps, "gate": row.gate})
    return get(store, row.id)


def get(store: Store, rollout_id: int) -> RolloutRow:
    found = store._db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if found is None:
        raise NotFoundLocally(f"no rollout r-{rollout_id}", hint="list them: mlcloud rollouts")
    row = _from_row(found)
    row.decisions = [
        {
            "at": d["at"],
            "action": d["action"],
            "reason": d["reason"],
            "numbers": json.loads(d["numbers"]) if d["numbers"] else {},
        }
        for d in store._db.execute(
            "SELECT at, action, reason, numbers FROM rollout_decisions WHERE rollout_id = ? "
            "ORDER BY id",
            (rollout_id,),
        ).fetchall()
    ]
    return row


def list_rollouts(store: Store, endpoint: str | None = None, limit: int = 100) -> list[RolloutRow]:
    query, args = "SELECT * FROM rollouts", tuple[str, ...]()
    if endpoint is not None:
        query, args = query + " WHERE endpoint = ?", (endpoint,)
    rows = store._db.execute(query + f" ORDER BY id DESC LIMIT {int(limit)}", args).fetchall()
    return [_from_row(r) for r in rows]


def unfinished(store: Store) -> list[RolloutRow]:
    """Every rollout not in a final state, oldest first (what a controller may still owe)."""
    marks = ", ".join("?" * len(FINAL))
    rows = store._db.execute(
        f"SELECT * FROM rollouts WHERE state NOT IN ({marks}) ORDER BY id",  # noqa: S608
        FINAL,
    ).fetchall()
    return [_from_row(r) for r in rows]


def active_for(store: Store, endpoint: str, provider: str) -> RolloutRow | None:
    marks = ", ".join("?" * len(ACTIVE))
    found = store._db.execute(
        f"SELECT * FROM rollouts WHERE endpoint = ? AND provider = ? AND state IN ({marks})",  # noqa: S608
        (endpoint, provider, *ACTIVE),
    ).fetchone()
    return _from_row(found) if found is not None else None


def update(store: Store, rollout_id: int, **fields: Any) -> None:
    """Write ``fields`` of the row (no decision: a check's numbers, the controller's pid)."""
    sets = ", ".join(f"{c} = ?" for c in fields)
    values = [_encode(c, v) for c, v in fields.items()]
    with store._tx() as db:
        db.execute(
            f"UPDATE rollouts SET {sets}, updated_at = ? WHERE id = ?",  # noqa: S608
            (*values, time.time(), rollout_id),
        )


def transition(
    store: Store,
    rollout_id: int,
    expect: tuple[str, int],
    action: str,
    reason: str,
    numbers: dict[str, Any],
    **fields: Any,
) -> RolloutRow:
    """Apply ``fields`` and record the decision, if the row is still at ``expect`` (state,
    step); else ``Conflict`` (another controller acted first)."""
    now = time.time()
    with store._tx() as db:
        found = db.execute(
            "SELECT state, step FROM rollouts WHERE id = ?", (rollout_id,)
        ).fetchone()
        if found is None or (found["state"], int(found["step"])) != expect:
            raise Conflict(
                f"rollout r-{rollout_id} moved on before this decision ({action})",
                provider_type="rollouts",
            )
        if fields:
            sets = ", ".join(f"{c} = ?" for c in fields)
            db.execute(
                f"UPDATE rollouts SET {sets}, updated_at = ? WHERE id = ?",  # noqa: S608
                (*[_encode(c, v) for c, v in fields.items()], now, rollout_id),
            )
        _decide(db, rollout_id, now, action, reason, numbers)
    return get(store, rollout_id)


def _decide(
    db: Any, rollout_id: int, at: float, action: str, reason: str, numbers: dict[str, Any]
) -> None:
    db.execute(
        "INSERT INTO rollout_decisions (rollout_id, at, action, reason, numbers) "
        "VALUES (?, ?, ?, ?, ?)",
        (rollout_id, at, action, reason, json.dumps(numbers, default=str)),
    )


def _from_row(r: Any) -> RolloutRow:
    def js(column: str) -> Any:
        return json.loads(r[column]) if r[column] else None

    return RolloutRow(
        id=int(r["id"]),
        endpoint=r["endpoint"],
        provider=r["provider"],
        model=r["model"],
        canary=int(r["canary"]),
        steps=[int(x) for x in js("steps") or []],
        step=int(r["step"]),
        bake_s=float(r["bake_s"]),
        gate=r["gate"],
        min_requests=int(r["min_requests"]),
        state=r["state"],
        created_at=float(r["created_at"]),
        updated_at=float(r["updated_at"]),
        model_uri=r["model_uri"],
        registry_name=r["registry_name"],
        registry_version=r["registry_version"],
        stable_version=r["stable_version"],
        canary_version=r["canary_version"],
        step_started=r["step_started"],
        baseline=js("baseline"),
        last_check=js("last_check"),
        controller=js("controller"),
        message=r["message"],
    )
