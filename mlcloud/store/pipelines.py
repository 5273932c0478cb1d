"""Pipeline runs, steps, the step cache, schedules and trigger firings in the state store
(migration ``0005_pipelines.sql``).

A run row and its step rows hold everything a runner needs to resume after a kill: each step's
state, the job it submitted (recorded before the job is sent, so a resumed runner adopts it
instead of sending another), its outputs. A trigger's state and the firing it causes are written
in one transaction, and a firing is unique by its key, so a scheduler killed between two firings
loses none and doubles none.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFoundLocally

if TYPE_CHECKING:
    from mlcloud.store import Store

RUN_ACTIVE = ("PENDING", "RUNNING")
STEP_DONE = ("SUCCEEDED", "SKIPPED")


@dataclass
class StepRow:
    run_id: str
    step: str
    kind: str
    state: str
    provider: str | None = None
    job_id: str | None = None
    digest: str | None = None
    cached: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    started_at: float | None = None
    ended_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunRow:
    id: str
    pipeline: str
    spec: dict[str, Any]
    state: str
    reason: str
    created_at: float
    updated_at: float
    provider: str | None = None
    no_cache: bool = False
    cancel_requested: bool = False
    runner: dict[str, Any] | None = None
    message: str | None = None
    ended_at: float | None = None
    steps: list[StepRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("spec")
        return out


@dataclass
class Firing:
    id: int
    pipeline: str
    fkey: str
    kind: str
    reason: str
    at: float
    state: str  # pending, started, coalesced
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- runs ---------------------------------------------------------------------------------------
def create_run(store: Store, run: RunRow, steps: list[StepRow], firing: int | None = None) -> None:
    """Insert the run and its steps and mark the firing that caused it started, atomically;
    ``Conflict`` (nothing written) when that firing is no longer pending: another scheduler
    answered it."""
    with store._tx() as db:
        if firing is not None:
            cur = db.execute(
                "UPDATE pipeline_firings SET state = 'started', run_id = ? "
                "WHERE id = ? AND state = 'pending'",
                (run.id, firing),
            )
            if cur.rowcount != 1:
                raise Conflict(f"firing {firing} was answered already", provider_type="pipelines")
        db.execute(
            "INSERT INTO pipeline_runs (id, pipeline, spec, provider, state, reason, no_cache, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.id,
                run.pipeline,
                json.dumps(run.spec),
                run.provider,
                run.state,
                run.reason,
                int(run.no_cache),
                run.created_at,
                run.updated_at,
            ),
        )
        for s in steps:
            db.execute(
                "INSERT INTO pipeline_steps (run_id, step, kind, state, provider) "
                "VALUES (?, ?, ?, ?, ?)",
                (run.id, s.step, s.kind, s.state, s.provider),
            )


def _run(row: Any) -> RunRow:
    data = dict(row)
    data["spec"] = json.loads(data["spec"])
    data["runner"] = json.loads(data["runner"]) if data["runner"] else None
    data["no_cache"] = bool(data["no_cache"])
    data["cancel_requested"] = bool(data["cancel_requested"])
    return RunRow(**data)


def _step(row: Any) -> StepRow:
    data = dict(row)
    data["outputs"] = json.loads(data["outputs"])
    data["cached"] = bool(data["cached"])
    return StepRow(**data)


def get_run(store: Store, run_id: str) -> RunRow:
    row = store._db.execute("SELECT * FROM pipeline_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise NotFoundLocally(
            f"no pipeline run {run_id!r}", hint="list them: mlcloud pipelines runs"
        )
    run = _run(row)
    order = {s.get("name"): i for i, s in enumerate(run.spec.get("steps") or [])}
    run.steps = sorted(steps_of(store, run_id), key=lambda s: order.get(s.step, len(order)))
    return run


def steps_of(store: Store, run_id: str) -> list[StepRow]:
    rows = store._db.execute("SELECT * FROM pipeline_steps WHERE run_id = ?", (run_id,))
    return [_step(r) for r in rows.fetchall()]


def list_runs(store: Store, pipeline: str | None = None, limit: int = 50) -> list[RunRow]:
    query, args = "SELECT * FROM pipeline_runs", []
    if pipeline is not None:
        query += " WHERE pipeline = ?"
        args.append(pipeline)
    rows = store._db.execute(query + " ORDER BY created_at DESC LIMIT ?", [*args, limit])
    return [_run(r) for r in rows.fetchall()]


def active_runs(store: Store, pipeline: str) -> list[RunRow]:
    rows = store._db.execute(
        "SELECT * FROM pipeline_runs WHERE pipeline = ? AND state IN (?, ?)",
        (pipeline, *RUN_ACTIVE),
    )
    return [_run(r) for r in rows.fetchall()]


def update_run(store: Store, run_id: str, **fields: Any) -> None:
    if "runner" in fields and fields["runner"] is not None:
        fields["runner"] = json.dumps(fields["runner"])
    fields["updated_at"] = time.time()
    cols = ", ".join(f"{k} = ?" for k in fields)
    with store._tx() as db:
        db.execute(
            f"UPDATE pipeline_runs SET {cols} WHERE id = ?",  # noqa: S608 (our names)
            [*fields.values(), run_id],
        )


def update_step(store: Store, run_id: str, step: str, **fields: Any) -> None:
    if "outputs" in fields:
        fields["outputs"] = json.dumps(fields["outputs"], default=str)
    if "cached" in fields:
        fields["cached"] = int(fields["cached"])
    cols = ", ".join(f"{k} = ?" for k in fields)
    with store._tx() as db:
        db.execute(
            f"UPDATE pipeline_steps SET {cols} WHERE run_id = ? AND step = ?",  # noqa: S608
            [*fields.values(), run_id, step],
        )


# ---- the step cache -----------------------------------------------------------------------------
def cached(store: Store, digest: str) -> dict[str, Any] | None:
    row = store._db.execute(
        "SELECT outputs FROM pipeline_cache WHERE digest = ?", (digest,)
    ).fetchone()
    return None if row is None else dict(json.loads(row["outputs"]))


def remember(
    store: Store, digest: str, kind: str, outputs: dict[str, Any], run_id: str, step: str
) -> None:
    with store._tx() as db:
        db.execute(
            "INSERT INTO pipeline_cache (digest, kind, outputs, run_id, step, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET outputs = "
            "excluded.outputs, run_id = excluded.run_id, step = excluded.step, "
            "created_at = excluded.created_at",
            (digest, kind, json.dumps(outputs, default=str), run_id, step, time.time()),
        )


def forget(store: Store, digest: str) -> None:
    with store._tx() as db:
        db.execute("DELETE FROM pipeline_cache WHERE digest = ?", (digest,))


# ---- schedules and triggers ---------------------------------------------------------------------
def put_schedule(
    store: Store,
    name: str,
    file: str | None,
    spec: dict[str, Any],
    states: list[tuple[str, dict[str, Any]]],
) -> None:
    """(Re)register a pipeline's triggers; each trigger starts from ``states[i]`` (its baseline:
    now for a schedule, the current digest for data, the alias's last move for model)."""
    now = time.time()
    with store._tx() as db:
        db.execute(
            "INSERT INTO pipeline_schedules (name, file, spec, enabled, created_at, updated_at) "
            "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (name) DO UPDATE SET file = excluded.file, "
            "spec = excluded.spec, enabled = 1, updated_at = excluded.updated_at",
            (name, file, json.dumps(spec), now, now),
        )
        db.execute("DELETE FROM pipeline_trigger_state WHERE pipeline = ?", (name,))
        for idx, (kind, state) in enumerate(states):
            db.execute(
                "INSERT INTO pipeline_trigger_state (pipeline, idx, kind, state) "
                "VALUES (?, ?, ?, ?)",
                (name, idx, kind, json.dumps(state)),
            )


def unschedule(store: Store, name: str) -> bool:
    with store._tx() as db:
        cur = db.execute(  # False when it was not scheduled (or already unscheduled)
            "UPDATE pipeline_schedules SET enabled = 0 WHERE name = ? AND enabled = 1", (name,)
        )
        return cur.rowcount > 0


def schedules(store: Store) -> list[dict[str, Any]]:
    rows = store._db.execute("SELECT * FROM pipeline_schedules WHERE enabled = 1 ORDER BY name")
    return [{**dict(r), "spec": json.loads(r["spec"])} for r in rows.fetchall()]


def schedule(store: Store, name: str) -> dict[str, Any] | None:
    row = store._db.execute(
        "SELECT * FROM pipeline_schedules WHERE name = ? AND enabled = 1", (name,)
    ).fetchone()
    return None if row is None else {**dict(row), "spec": json.loads(row["spec"])}


def trigger_states(store: Store, name: str) -> dict[int, dict[str, Any]]:
    rows = store._db.execute(
        "SELECT idx, state FROM pipeline_trigger_state WHERE pipeline = ?", (name,)
    )
    return {int(r["idx"]): json.loads(r["state"]) for r in rows.fetchall()}


def set_trigger_state(store: Store, name: str, idx: int, state: dict[str, Any]) -> None:
    with store._tx() as db:
        db.execute(
            "UPDATE pipeline_trigger_state SET state = ? WHERE pipeline = ? AND idx = ?",
            (json.dumps(state), name, idx),
        )


def fire(
    store: Store,
    name: str,
    fkey: str,
    kind: str,
    reason: str,
    trigger: tuple[int, dict[str, Any]] | None = None,
) -> bool:
    """Record a firing (and its trigger's new state) in one transaction; False when a firing
    with this key was already recorded."""
    with store._tx() as db:
        row = db.execute(
            "INSERT INTO pipeline_firings (pipeline, fkey, kind, reason, at, state) "
            "VALUES (?, ?, ?, ?, ?, 'pending') ON CONFLICT (pipeline, fkey) DO NOTHING "
            "RETURNING id",
            (name, fkey, kind, reason, time.time()),
        ).fetchone()
        if trigger is not None:
            db.execute(
                "UPDATE pipeline_trigger_state SET state = ? WHERE pipeline = ? AND idx = ?",
                (json.dumps(trigger[1]), name, trigger[0]),
            )
    return row is not None


def last_firing(store: Store) -> int:
    (last,) = store._db.execute("SELECT COALESCE(MAX(id), 0) FROM pipeline_firings").fetchone()
    return int(last)


def firings(
    store: Store,
    name: str | None = None,
    state: str | None = None,
    limit: int = 1000,
    *,
    after: int = 0,
) -> list[Firing]:
    """Firings, oldest first (``after``: only those with a greater id)."""
    query = "SELECT * FROM pipeline_firings WHERE id > ?"
    args: list[Any] = [after]
    if name is not None:
        query += " AND pipeline = ?"
        args.append(name)
    if state is not None:
        query += " AND state = ?"
        args.append(state)
    rows = store._db.execute(query + " ORDER BY id LIMIT ?", [*args, limit])
    return [Firing(**dict(r)) for r in rows.fetchall()]


def coalesce(store: Store, firing_ids: list[int], run_id: str) -> None:
    """Pending firings that one run answers (they arrived while it was due or running)."""
    with store._tx() as db:
        for fid in firing_ids:
            db.execute(
                "UPDATE pipeline_firings SET state = 'coalesced', run_id = ? "
                "WHERE id = ? AND state = 'pending'",
                (run_id, fid),
            )
