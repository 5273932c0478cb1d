"""One step of a rollout's state machine (``advance``), idempotent and resumable.

States: ``starting`` (the canary deploy) → ``baking`` (step k: the canary at ``steps[k]``
percent, checked against the gate) → ``promoting`` / ``rolling_back`` (the decision is taken
and recorded, the traffic is being moved) → ``promoted`` / ``rolled_back`` / ``aborted``
(final), or ``failed`` (the canary deploy itself failed).

Why the two-phase end: the decision and its numbers are written before the traffic moves, so a
controller killed between the two finds ``rolling_back`` and finishes the move; moving traffic
to weights already in force is harmless. A step up is ``set_traffic`` then the step's
transition, both repeatable. Every transition names the (state, step) it expects, so two
controllers (a resumed one and a stale one) cannot both act on one step.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

from mlcloud import api
from mlcloud.errors import Conflict, NotFoundLocally
from mlcloud.rollouts import stats
from mlcloud.rollouts.gate import Sample, judge, parse_gate
from mlcloud.store import Store
from mlcloud.store import rollouts as db
from mlcloud.store.rollouts import RolloutRow

CHAMPION = "champion"


def advance(store: Store, rollout_id: int) -> RolloutRow:
    """Take whatever transition the rollout is due now; a final rollout is returned as is."""
    row = db.get(store, rollout_id)
    prov = api.provider_named(row.provider, store)
    if row.state == "starting":
        row = _adopt_deploy(store, prov, row)
    if row.state == "baking":
        row = _check(store, prov, row)
    if row.state in ("promoting", "rolling_back"):
        row = _finish(store, prov, row)
    return row


def _serving(prov: Any, name: str) -> dict[str, int]:
    try:
        return dict(prov.endpoint_status(name).details.get("traffic") or {})
    except NotFoundLocally:
        return {}


def _adopt_deploy(store: Store, prov: Any, row: RolloutRow) -> RolloutRow:
    """A controller resumed while the canary deploy ran: adopt the canary if it serves."""
    record = prov.endpoint_status(row.endpoint)
    newest = record.details.get("newest")
    traffic = record.details.get("traffic") or {}
    if newest and newest != row.stable_version and newest in traffic and len(traffic) == 2:
        return began_baking(store, prov, row, newest)
    return db.transition(
        store, row.id, (row.state, row.step), "fail",
        "the canary deploy did not complete; the stable version still serves", {"traffic": traffic},
        state="failed", message="the canary deploy was interrupted",
    )  # fmt: skip


def began_baking(store: Store, prov: Any, row: RolloutRow, canary: str) -> RolloutRow:
    baseline = stats.snapshot(prov, row.endpoint, canary)
    return db.transition(
        store, row.id, (row.state, row.step), "deploy",
        f"canary {canary} serves {row.weight}% beside {row.stable_version}",
        {"weight": row.weight, "canary_version": canary},
        state="baking", canary_version=canary, step_started=time.time(), baseline=baseline,
    )  # fmt: skip


def _check(store: Store, prov: Any, row: RolloutRow) -> RolloutRow:
    """Judge the canary's step so far: roll back on a violated gate, step up (or promote) once
    the bake is over with enough requests seen."""
    assert row.canary_version and row.stable_version
    traffic = _serving(prov, row.endpoint)
    if row.canary_version not in traffic or row.stable_version not in traffic:
        return _moved_behind_our_back(store, row, traffic)
    now = stats.snapshot(prov, row.endpoint, row.canary_version)
    marks = list((row.last_check or {}).get("marks") or [])
    if now is None:  # the server's windowed numbers
        sample, window = stats.sample(prov, row.endpoint, row.canary_version, None), None
    else:
        sample = stats.between(now, row.baseline)
        window = stats.recent(now, marks, row.min_requests)
        marks = [*marks, {k: now[k] for k in ("epoch", "at", "requests", "errors", "buckets")}]
    elapsed = time.time() - float(row.step_started or row.created_at)
    numbers = {**sample.numbers(), "weight": row.weight, "elapsed_s": round(elapsed, 2),
               "min_requests": row.min_requests}  # fmt: skip
    enough = sample.requests >= row.min_requests
    gate = parse_gate(row.gate)
    violated = judge(gate, sample) if enough else []
    if not violated and window is not None and judge(gate, window):
        numbers["recent"] = window.numbers()
        violated = [f"{v} in the last {window.requests} requests" for v in judge(gate, window)]
    if violated:
        reason = f"rollout r-{row.id} rolled back: " + "; ".join(violated)
        return decide(store, row, "rolling_back", "rollback", reason, numbers)
    if elapsed < row.bake_s:
        db.update(store, row.id, last_check={**numbers, "at": time.time(), "marks": marks[-10:]})
        return db.get(store, row.id)
    if not enough:
        reason = (
            f"rollout r-{row.id} rolled back: inconclusive, {sample.requests} request(s) "
            f"reached the canary in {row.bake_s:g}s, at least {row.min_requests} needed"
        )
        return decide(store, row, "rolling_back", "rollback", reason, numbers)
    if row.step + 1 >= len(row.steps) or row.steps[row.step + 1] >= 100:
        reason = f"rollout r-{row.id} promoted: {_healthy(row, sample)}"
        return decide(store, row, "promoting", "promote", reason, numbers)
    return _step_up(store, prov, row, sample, numbers)


def _healthy(row: RolloutRow, sample: Sample) -> str:
    return (
        f"{row.canary_version} held the gate {row.gate} at {row.weight}% for {row.bake_s:g}s "
        f"({sample.requests} requests, {sample.errors} errors)"
    )


def _step_up(
    store: Store, prov: Any, row: RolloutRow, sample: Sample, numbers: dict[str, Any]
) -> RolloutRow:
    assert row.canary_version and row.stable_version
    weight = row.steps[row.step + 1]
    prov.set_traffic(row.endpoint, {row.canary_version: weight, row.stable_version: 100 - weight})
    baseline = stats.snapshot(prov, row.endpoint, row.canary_version)
    return db.transition(
        store, row.id, ("baking", row.step), "step",
        f"{_healthy(row, sample)}; now {weight}%", {**numbers, "next_weight": weight},
        step=row.step + 1, step_started=time.time(), baseline=baseline,
    )  # fmt: skip


def decide(
    store: Store, row: RolloutRow, state: str, action: str, reason: str, numbers: dict[str, Any]
) -> RolloutRow:
    """Record the decision (``promoting`` / ``rolling_back``), then carry it out."""
    row = db.transition(
        store, row.id, (row.state, row.step), action, reason, numbers,
        state=state, message=reason, last_check={**numbers, "at": time.time()},
    )  # fmt: skip
    return _finish(store, api.provider_named(row.provider, store), row)


def _finish(store: Store, prov: Any, row: RolloutRow) -> RolloutRow:
    """Move the traffic as decided (repeatable), then the final state and the registry."""
    assert row.stable_version
    promote = row.state == "promoting"
    keep = row.canary_version if promote else row.stable_version
    traffic = _serving(prov, row.endpoint)
    if keep and keep in traffic and len(traffic) > 1:
        prov.set_traffic(row.endpoint, {keep: 100})
    aborted = any(d["action"] == "abort" for d in row.decisions)
    final = "promoted" if promote else "aborted" if aborted else "rolled_back"
    _tell_registry(row, promote)
    db.update(store, row.id, state=final)
    return db.get(store, row.id)


def _moved_behind_our_back(store: Store, row: RolloutRow, traffic: dict[str, int]) -> RolloutRow:
    """Someone changed the endpoint's versions outside the rollout (a redeploy, an undeploy):
    the rollout cannot judge what no longer serves beside its stable version."""
    return db.transition(
        store, row.id, (row.state, row.step), "fail",
        f"the endpoint's versions changed outside the rollout (now {traffic or 'none'})",
        {"traffic": traffic}, state="failed", message="the endpoint changed outside the rollout",
    )  # fmt: skip


def _tell_registry(row: RolloutRow, promoted: bool) -> None:
    """Promote: move ``champion`` to the canary's registry version; roll back: note why in the
    alias history. Only for a model given as a registry ref, and only where the registry
    exists (it is optional to this package)."""
    if not row.registry_name or not row.registry_version:
        return
    reason = row.message or ("promoted" if promoted else "rolled back")
    if promoted:
        move = getattr(api, "move_alias", None)
        if move is not None:
            move(row.registry_name, CHAMPION, int(row.registry_version), reason=reason)
        return
    try:
        registry = importlib.import_module("mlcloud.model_registry")
    except ImportError:
        return
    note = getattr(registry, "note", None)
    if note is not None:  # on the version champion still points at: the entry moves nothing
        note(row.registry_name, CHAMPION, _champion(row) or int(row.registry_version), reason)


def _champion(row: RolloutRow) -> int | None:
    try:
        found = api.model(f"{row.registry_name}@{CHAMPION}")
    except Exception:  # no champion yet
        return None
    number = found.get("version") if isinstance(found, dict) else None
    return int(number) if number is not None else None


def abort(store: Store, rollout_id: int, who: str) -> RolloutRow:
    """Roll back now, whatever the numbers; a final rollout is returned unchanged."""
    row = db.get(store, rollout_id)
    if row.state in db.FINAL:
        return row
    if row.state in ("promoting", "rolling_back"):
        return advance(store, rollout_id)
    if row.state == "starting" or not row.canary_version:
        raise Conflict(
            f"rollout r-{rollout_id} is still deploying its canary",
            hint="abort it once it bakes (a moment), or undeploy the endpoint",
            provider_type="rollouts",
        )
    reason = f"rollout r-{rollout_id} aborted by {who}: rolled back to {row.stable_version}"
    try:
        return decide(store, row, "rolling_back", "abort", reason, {"weight": row.weight})
    except Conflict:  # the controller decided first: finish whatever it decided
        return advance(store, rollout_id)
