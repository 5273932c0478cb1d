"""The pipelines' store module on both backends (SQLite, real PostgreSQL): runs and steps,
the step cache, trigger state moved with its firing, unique firings, coalescing."""

from __future__ import annotations

import time

import pytest

from mlcloud.errors import NotFoundLocally
from mlcloud.store import Store
from mlcloud.store import pipelines as db

pytestmark = pytest.mark.usefixtures("store_backend")


def test_runs_steps_and_cache_round_trip() -> None:
    store = Store.open()
    now = time.time()
    spec = {"name": "p", "steps": [{"name": "b"}, {"name": "a"}]}
    run = db.RunRow("p-1", "p", spec, "PENDING", "manual", now, now, provider="local")
    steps = [db.StepRow("p-1", "b", "job", "WAITING"), db.StepRow("p-1", "a", "condition",
                                                                   "WAITING")]  # fmt: skip
    db.create_run(store, run, steps)
    db.update_step(store, "p-1", "b", state="SUCCEEDED", outputs={"model": "/m"}, cached=True)
    db.update_run(store, "p-1", state="RUNNING", runner={"pid": 1})
    got = db.get_run(store, "p-1")
    assert [s.step for s in got.steps] == ["b", "a"]  # the pipeline's order
    assert got.steps[0].outputs == {"model": "/m"} and got.steps[0].cached is True
    assert got.runner == {"pid": 1} and got.spec == spec
    assert [r.id for r in db.active_runs(store, "p")] == ["p-1"]
    with pytest.raises(NotFoundLocally):
        db.get_run(store, "nope")
    assert db.cached(store, "d1") is None
    db.remember(store, "d1", "job", {"job": "j-1"}, "p-1", "b")
    db.remember(store, "d1", "job", {"job": "j-2"}, "p-1", "b")  # replaced, not doubled
    assert db.cached(store, "d1") == {"job": "j-2"}
    store.close()


def test_a_firing_is_unique_and_moves_its_trigger_state_with_it() -> None:
    store = Store.open()
    db.put_schedule(store, "p", "/p.yaml", {"name": "p"}, [("schedule", {"last": 1.0})])
    assert db.fire(store, "p", "schedule:0:100", "schedule", "due", (0, {"last": 100.0}))
    assert not db.fire(store, "p", "schedule:0:100", "schedule", "due", (0, {"last": 100.0}))
    assert db.trigger_states(store, "p") == {0: {"last": 100.0}}
    db.fire(store, "p", "drift:1", "drift", "drift")
    db.fire(store, "p", "drift:2", "drift", "drift")
    pending = db.firings(store, "p", state="pending")
    assert [f.fkey for f in pending] == ["schedule:0:100", "drift:1", "drift:2"]
    now = time.time()
    run = db.RunRow("p-2", "p", {"name": "p", "steps": []}, "PENDING", "due", now, now)
    db.create_run(store, run, [], firing=pending[0].id)
    db.coalesce(store, [f.id for f in pending[1:]], "p-2")
    assert [(f.state, f.run_id) for f in db.firings(store, "p")] == [
        ("started", "p-2"), ("coalesced", "p-2"), ("coalesced", "p-2")]  # fmt: skip
    assert [s["name"] for s in db.schedules(store)] == ["p"]
    assert db.unschedule(store, "p") and db.schedule(store, "p") is None
    store.close()
