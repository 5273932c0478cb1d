"""Scheduled drift checks firing the retraining pipeline (issue 13, item 5): one drift episode
fires once, a drift within the cool-down waits, a calm check ends the episode, two schedulers
never run one check twice. Real store, real capture files read by the local provider's reader,
a real scheduled pipeline whose `drift` trigger records the firing and runs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mlcloud import pipelines as pl
from mlcloud.monitor import alerts
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.store import Store
from mlcloud.store import monitor as db
from mlcloud.store import pipelines as pdb
from providers.local.capture import capture_dir
from tests.monitor.helpers import gaussian_model, shifted, write_capture

HOUR, DAY = 3600.0, 86400.0


@pytest.fixture
def store(store_backend: str) -> Store:
    """The state store, SQLite and PostgreSQL (tests/pg.py; skipped, saying why, without it)."""
    st = Store.open()
    yield st  # type: ignore[misc]
    st.close()


def _endpoint(store: Store, model: Path, **monitor: object) -> EndpointRecord:
    spec = {"name": "gauss", "model": str(model), "capture": {"sample": 1.0},
            "monitor": {"every": "1h", "on_drift": {"pipeline": "retrain"}, **monitor}}  # fmt: skip
    record = EndpointRecord(name="gauss", provider="local", type="local",
                            state=EndpointState.READY, model=str(model), spec=spec)  # fmt: skip
    return store.put_endpoint(record)


def _pipeline(tmp_path: Path) -> None:
    data = {"name": "retrain", "params": {"x": 1},
            "steps": [{"name": "ok", "condition": "params.x > 0"}],
            "triggers": [{"drift": {"endpoint": "gauss"}}]}  # fmt: skip
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    pl.schedule(path)


def _traffic(store: Store, at: float, shift: float, seed: int) -> None:
    rows = shifted(400, shift, seed=seed)
    write_capture(capture_dir(store.home, "gauss"), rows, [0] * len(rows), at)


def _firings(store: Store) -> list[pdb.Firing]:
    return pdb.firings(store, "retrain")


def _settle(store: Store) -> None:
    deadline = time.monotonic() + 60
    while any(r.state not in pl.FINAL for r in pl.runs("retrain")) or any(
        f.state == "pending" for f in _firings(store)
    ):
        assert time.monotonic() < deadline
        pl.tick(now=0)  # dispatch only: no schedule is due at time 0
        time.sleep(0.2)


def test_one_episode_fires_once_and_the_cooldown_holds(tmp_path: Path, store: Store) -> None:
    model = gaussian_model(tmp_path / "m", rows=2000)
    record = _endpoint(store, model, cooldown="3d")
    _pipeline(tmp_path)
    t0 = time.time()
    _traffic(store, t0 - 600, shift=1.0, seed=14)

    assert [r.name for r in alerts.due_checks(t0, store)] == ["gauss"]
    [first] = alerts.tick(t0, store)
    assert (first.action, first.drifted, first.rows) == ("fired", ["f2"], 400)
    [firing] = _firings(store)
    assert firing.id == first.firing and firing.reason == "drift: endpoint gauss: drifted f2"
    assert alerts.tick(t0 + 60, store) == []  # not due yet

    [same] = alerts.tick(t0 + HOUR, store)  # still drifting: the same episode
    assert same.action == "in-episode" and len(_firings(store)) == 1
    _traffic(store, t0 + 2 * DAY - 600, shift=0.0, seed=16)
    [calm] = alerts.tick(t0 + 2 * DAY, store)  # the drifted rows left the 24h window
    assert (calm.action, calm.drifted) == ("none", [])
    _traffic(store, t0 + 2 * DAY + HOUR - 600, shift=1.0, seed=12)
    [early] = alerts.tick(t0 + 2 * DAY + HOUR, store)  # a new episode inside the cool-down
    assert (early.action, early.drifted) == ("cooldown", ["f2"]) and len(_firings(store)) == 1
    _traffic(store, t0 + 3 * DAY + HOUR - 600, shift=1.0, seed=13)
    [again] = alerts.tick(t0 + 3 * DAY + HOUR, store)
    assert again.action == "fired" and len(_firings(store)) == 2

    history = [c["action"] for c in db.checks(store, "gauss")][::-1]
    assert history == ["fired", "in-episode", "none", "cooldown", "fired"]
    assert record.spec["monitor"]["cooldown"] == "3d"
    _settle(store)
    assert {r.state for r in pl.runs("retrain")} == {"SUCCEEDED"}


def test_two_schedulers_run_a_due_check_once(tmp_path: Path, store: Store) -> None:
    model = gaussian_model(tmp_path / "m", rows=2000)
    record = _endpoint(store, model)
    _pipeline(tmp_path)
    now = time.time()
    _traffic(store, now - 600, shift=1.0, seed=20)
    other = Store.open()
    try:
        outcomes = [alerts.run_check(record, s, now) for s in (store, other)]
    finally:
        other.close()
    assert sorted(o.action for o in outcomes) == ["fired", "skipped"]
    assert len(_firings(store)) == 1
    _settle(store)


def test_a_check_that_fails_is_recorded_and_fires_nothing(tmp_path: Path, store: Store) -> None:
    model = gaussian_model(tmp_path / "m", rows=500)
    record = _endpoint(store, model)
    spec = {**record.spec}
    spec.pop("capture")  # deployed without capture: nothing to read
    store.put_endpoint(EndpointRecord(**{**record.__dict__, "spec": spec}))
    [outcome] = alerts.tick(time.time(), store)
    assert outcome.action == "error" and "captures no requests" in (outcome.message or "")
    assert db.checks(store, "gauss")[0]["action"] == "error"


def test_an_unscheduled_pipeline_leaves_the_episode_unanswered(
    tmp_path: Path, store: Store
) -> None:
    model = gaussian_model(tmp_path / "m", rows=2000)
    _endpoint(store, model)  # its pipeline "retrain" was never scheduled
    now = time.time()
    _traffic(store, now - 600, shift=1.0, seed=30)
    [outcome] = alerts.tick(now, store)
    assert outcome.action == "error" and "not scheduled" in (outcome.message or "")
    state = db.state(store, "gauss", "local")
    assert state is not None and not state.drifting and state.last_fired is None
    assert np.isclose(state.last_check or 0, now)


def test_the_monitor_loop_fires_in_the_background(tmp_path: Path, store: Store) -> None:
    model = gaussian_model(tmp_path / "m", rows=2000)
    _endpoint(store, model)
    _pipeline(tmp_path)
    _traffic(store, time.time() - 600, shift=1.0, seed=14)
    thread, stop = alerts.start_thread(interval=0.05)
    try:
        deadline = time.monotonic() + 30
        while not _firings(store):
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and len(_firings(store)) == 1  # checked often, fired once
    _settle(store)


def test_the_deployments_thresholds_apply(tmp_path: Path, store: Store) -> None:
    model = gaussian_model(tmp_path / "m", rows=2000)
    _endpoint(store, model, thresholds={"f2": 1e-300})  # f2 may move (its p-value is not that low)
    _pipeline(tmp_path)
    now = time.time()
    _traffic(store, now - 600, shift=1.0, seed=14)
    [outcome] = alerts.tick(now, store)
    assert (outcome.action, outcome.drifted) == ("none", []) and _firings(store) == []
