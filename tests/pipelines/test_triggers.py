"""Triggers (issue 12, item 3): schedule catch-up, data that settles, alias moves, the drift
hook, one run at a time, and a scheduler killed with -9 that loses and doubles nothing."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlcloud import api
from mlcloud import pipelines as pl
from mlcloud.errors import NotFoundLocally, SpecError
from mlcloud.store import Store
from mlcloud.store import pipelines as db
from tests.pipelines.conftest import job, write

QUICK = [{"name": "ok", "condition": "params.x > 0"}]


def pipeline(
    name: str, triggers: list[dict[str, Any]], steps: list[Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "params": {"x": 1},
        "steps": steps or QUICK,
        "triggers": triggers,
        **extra,
    }


def firings(name: str) -> list[db.Firing]:
    store = Store.open()
    try:
        return db.firings(store, name)
    finally:
        store.close()


def settle_runs(name: str, timeout: float = 60, now: float | None = None) -> list[pl.RunRow]:
    """Tick until every firing has its run and every run ended (``now``: the time the triggers
    are checked at; long past: no new firing, only dispatching)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = pl.runs(name)
        if all(r.state in pl.FINAL for r in runs) and not any(
            f.state == "pending" for f in firings(name)
        ):
            return runs
        assert time.monotonic() < deadline, [r.to_dict() for r in runs]
        pl.tick(now=now)
        time.sleep(0.2)


def set_state(name: str, idx: int, state: dict[str, Any]) -> None:
    store = Store.open()
    db.set_trigger_state(store, name, idx, state)
    store.close()


def test_a_missed_schedule_fires_once_on_start(project: Path) -> None:
    path = write(project, pipeline("nightly", [{"schedule": "0 3 * * *", "timezone": "UTC"}]))
    pl.schedule(path)
    assert pl.tick() == []  # registering fires nothing for the past
    now = time.time()
    set_state("nightly", 0, {"last": now - 3 * 86400 - 3600})  # the scheduler was down 3 days
    fired = pl.tick(now=now)
    assert len(fired) == 1, fired
    assert "2 earlier time(s) missed while the scheduler was down (fired once)" in fired[0].reason
    assert pl.tick(now=now) == []  # not again
    run = pl.wait(str(firings("nightly")[0].run_id), timeout=30)
    assert run.state == "SUCCEEDED" and run.reason == fired[0].reason


def test_a_data_trigger_fires_once_after_the_directory_settles(project: Path) -> None:
    data = project / "data"
    data.mkdir()
    (data / "a.csv").write_text("1\n")
    path = write(project, pipeline("ondata", [{"data": "./data", "every": "1s", "settle": "1s"}]))
    pl.schedule(path)
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "mlcloud.cli", "scheduler", "--interval", "0.1"]
    )
    try:
        time.sleep(1.5)
        assert firings("ondata") == []  # unchanged data fires nothing
        for i in range(6):  # a directory being written for ~1.2 s
            (data / f"part-{i}.csv").write_text(f"{i}\n" * 1000)
            time.sleep(0.2)
        written = time.time()
        deadline = time.monotonic() + 10
        while not firings("ondata"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        fired = firings("ondata")
        assert fired[0].at - written < 1 + 1 + 1  # every + settle + slack
        time.sleep(2.5)
        assert len(firings("ondata")) == 1  # once, after it settled
        assert "content digest" in fired[0].reason
        (data / "a.csv").write_text("2\n")
        deadline = time.monotonic() + 10
        while len(firings("ondata")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        scheduler.send_signal(signal.SIGINT)
        scheduler.wait(10)
    runs = settle_runs("ondata")
    assert len(runs) == 2 and all(r.state == "SUCCEEDED" for r in runs)


def _model_dir(tmp: Path, c: float) -> str:
    from sklearn.linear_model import LogisticRegression

    from mlcloud import runtime

    model = LogisticRegression(C=c).fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    return str(runtime.save_model(model, "sklearn", tmp / f"model-{c}"))


def test_an_alias_move_fires_the_model_trigger(project: Path) -> None:
    v1 = api.register_model(_model_dir(project, 1.0), "tiny", alias="champion")
    path = write(project, pipeline("onmodel", [{"model": "tiny@champion"}]))
    pl.schedule(path)
    assert pl.tick() == []  # the alias's existing history is the baseline
    v2 = api.register_model(_model_dir(project, 2.0), "tiny")
    api.move_alias("tiny", "champion", v2.version, reason="better f1")
    fired = pl.tick()
    assert len(fired) == 1
    assert fired[0].reason.startswith(f"alias tiny@champion moved {v1.version} → {v2.version}")
    assert "better f1" in fired[0].reason
    assert pl.tick() == []
    settle_runs("onmodel")


def test_the_drift_hook_fires_and_runs_one_at_a_time(project: Path) -> None:
    slow = [{"name": "slow", "job": job("slow", SLEEP="2")}]
    path = write(project, pipeline("ondrift", [{"drift": {"endpoint": "iris"}}], slow))
    with pytest.raises(NotFoundLocally, match="not scheduled"):
        pl.trigger("ondrift", "drift")
    pl.schedule(path)
    first = pl.trigger("ondrift", "drift", "psi 0.31 on petal_width")
    assert first.reason == "drift: psi 0.31 on petal_width" and first.run_id
    second, third = pl.trigger("ondrift", "drift"), pl.trigger("ondrift", "manual")
    assert second.state == "pending" and third.state == "pending"  # a run is active: they wait
    runs = settle_runs("ondrift")
    assert len(runs) == 2  # the two waiting firings were answered by one run
    states = {f.id: (f.state, f.run_id) for f in firings("ondrift")}
    assert states[second.id][0] == "started" and states[third.id] == (
        "coalesced",
        states[second.id][1],
    )
    one, two = sorted(runs, key=lambda r: r.created_at)
    assert one.ended_at is not None and two.created_at >= one.ended_at  # never at the same time


def test_schedule_refuses_a_pipeline_without_triggers(project: Path) -> None:
    with pytest.raises(SpecError, match="has no triggers"):
        pl.schedule(write(project, pipeline("none", [])))


def test_kill_9_of_the_scheduler_loses_and_doubles_no_firing(project: Path) -> None:
    path = write(project, pipeline("everysec", [{"schedule": "* * * * * *"}]))
    pl.schedule(path)
    argv = [sys.executable, "-m", "mlcloud.cli", "scheduler", "--interval", "0.1"]
    for up, down in ((3.0, 2.5), (3.0, 0.0)):
        proc = subprocess.Popen(argv)
        time.sleep(up)
        os.kill(proc.pid, signal.SIGKILL)  # between (or during) firings
        proc.wait(5)
        time.sleep(down)
    fired = firings("everysec")
    dues = [int(f.fkey.split(":")[2]) for f in fired]
    assert len(dues) == len(set(dues))  # none doubled
    assert dues == sorted(dues)
    for before, after in itertools.pairwise(fired):
        gap = int(after.fkey.split(":")[2]) - int(before.fkey.split(":")[2])
        if gap > 1:  # none lost: a gap is a catch-up firing that says so
            assert f"{gap - 1} earlier time(s) missed" in after.reason, (gap, after.reason)
    assert any("missed" in f.reason for f in fired)  # the 2.5 s down time was caught up once
    runs = settle_runs("everysec", now=1.0)  # every firing gets its run (started or coalesced)
    assert all(f.run_id for f in firings("everysec"))
    assert {r.id for r in runs} >= {f.run_id for f in firings("everysec")}
