"""Rollouts without servers: the gate's grammar, the steps, a sample from the front's
cumulative counters, the store's state machine rows, and the front's weighted schedule and
histogram (the numbers a rollout judges by). The end-to-end rollouts with real servers are in
tests/providers/local/test_canary.py."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mlcloud import rollouts
from mlcloud.errors import Conflict, NotFoundLocally, SpecError
from mlcloud.rollouts import stats
from mlcloud.rollouts.gate import Sample, judge, parse_gate
from mlcloud.store import Store
from mlcloud.store import rollouts as db
from providers.local.front_stats import BOUNDS_MS, Stats, percentile
from providers.local.front_stats import Counter as FrontCounter
from providers.local.front_upstreams import Upstreams, schedule, write_upstreams


# ---- the gate -------------------------------------------------------------------------------
def test_gate_parses_percent_and_milliseconds() -> None:
    gate = parse_gate("error_rate<1%, p99_ms<200,p50_ms<=20.5")
    assert [(c.metric, c.op, c.value) for c in gate] == [
        ("error_rate", "<", 0.01), ("p99_ms", "<", 200.0), ("p50_ms", "<=", 20.5),
    ]  # fmt: skip
    assert str(gate[0]) == "error_rate<1%"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("error_rate<1", "percentage"),
        ("error_rate<0.01", "percentage"),
        ("p99_ms<200ms", "number of milliseconds"),
        ("p99_ms>200", "stays under"),
        ("latency<200", "unknown metric 'latency'"),
        ("error_rate<1%,error_rate<2%", "more than once"),
        ("error_rate<1%,", "cannot read"),
        ("error_rate<150%", "above 100%"),
        ("p99_ms<-3", "number of milliseconds"),
    ],
)
def test_gate_is_strict(text: str, says: str) -> None:
    with pytest.raises(SpecError, match=says) as err:
        parse_gate(text)
    assert err.value.hint and "error_rate<1%" in err.value.hint


def test_judge_names_each_violation_with_its_number() -> None:
    gate = parse_gate("error_rate<1%,p99_ms<200")
    assert judge(gate, Sample(100, 0, 5.0, 150.0)) == []
    assert judge(gate, Sample(100, 12, 5.0, 450.0)) == [
        "error_rate 12.00% (gate error_rate<1%)", "p99_ms 450.0ms (gate p99_ms<200)",
    ]  # fmt: skip
    assert judge(gate, Sample(0, 0, None, None)) == []  # nothing measured, nothing violated


def test_steps_rise_from_the_canary_to_100() -> None:
    assert rollouts.plan_steps(10, None) == [10, 100]
    assert rollouts.plan_steps(10, [10, 50, 100]) == [10, 50, 100]
    assert rollouts.plan_steps(10, [50, 100]) == [10, 50, 100]
    for bad in ([10, 50], [10, 5, 100], [10, 50, 50, 100]):
        with pytest.raises(SpecError, match="rise"):
            rollouts.plan_steps(10, bad)
    with pytest.raises(SpecError, match=r"1\.\.99"):
        rollouts.plan_steps(100, None)
    assert rollouts.parse_id("r-12") == rollouts.parse_id(12) == 12
    with pytest.raises(SpecError):
        rollouts.parse_id("twelve")


# ---- the canary's sample from the front's cumulative counters ------------------------------
class _Front:
    """What LocalProvider.version_stats answers, from a real front_stats.Stats."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.epoch = "1:1.0"

    def version_stats(self, name: str) -> dict[str, Any]:
        data = self.stats.snapshot({"v2": ["http://u"]}, {"v2": 10})
        data["epoch"] = self.epoch
        return data


def test_a_step_is_judged_on_what_came_after_its_baseline() -> None:
    front = _Front()
    counter = front.stats.of("http://u")
    for _ in range(50):
        counter.record(500, 900.0)  # before the step: slow and failing
    baseline = stats.snapshot(front, "ep", "v2")
    for i in range(100):
        counter.record(500 if i < 3 else 200, 2.0)
    counter.unreachable += 2  # the canary's server was down for two attempts: its failures
    got = stats.sample(front, "ep", "v2", baseline)
    assert (got.requests, got.errors) == (102, 5)
    assert got.p99_ms is not None and got.p99_ms < 3.0  # the old 900 ms are not in it
    front.epoch = "2:2.0"  # the front restarted: everything it counts is within the step
    front.stats = Stats()
    front.stats.of("http://u").record(200, 1.0)
    assert stats.sample(front, "ep", "v2", baseline).requests == 1


def test_a_canary_turning_bad_late_is_judged_on_the_recent_window() -> None:
    front = _Front()
    counter = front.stats.of("http://u")
    base = stats.snapshot(front, "ep", "v2")
    for _ in range(1000):
        counter.record(200, 1.0)
    mark = stats.snapshot(front, "ep", "v2")
    for _ in range(20):
        counter.record(500, 1.0)
    now = stats.snapshot(front, "ep", "v2")
    assert base and mark and now
    gate = parse_gate("error_rate<5%")
    assert judge(gate, stats.between(now, base)) == []  # 20 in 1,020: diluted to 2%
    window = stats.recent(now, [base, mark], least=10)
    assert window is not None and (window.requests, window.errors) == (20, 20)
    assert judge(gate, window) == ["error_rate 100.00% (gate error_rate<5%)"]
    assert stats.recent(now, [base, mark], least=50) == stats.between(now, base)


def test_server_metrics_replace_the_fronts_when_registered() -> None:
    class VS:
        requests, errors, p50_ms, p99_ms = 40, 4, 3.0, 9.0

    rollouts.use_server_metrics(lambda endpoint, version: VS())
    try:
        assert stats.check_source(object()) == "server gateway metrics"
        assert stats.snapshot(object(), "ep", "v2") is None
        assert stats.sample(object(), "ep", "v2", None) == Sample(40, 4, 3.0, 9.0)
    finally:
        rollouts.use_server_metrics(None)


def test_a_provider_without_numbers_is_refused() -> None:
    class Cloud:
        where = "sagemaker (profile 'aws')"

    with pytest.raises(Exception, match="outside mlcloud server") as err:
        stats.check_source(Cloud())
    assert "server" in str(getattr(err.value, "hint", ""))


# ---- the store ------------------------------------------------------------------------------
def _row(**over: Any) -> db.RolloutRow:
    base: dict[str, Any] = dict(
        id=0, endpoint="ep", provider="local", model="/m", canary=10, steps=[10, 100], step=0,
        bake_s=60.0, gate="error_rate<1%", min_requests=20, state="starting", created_at=0.0,
        updated_at=0.0, stable_version="v1",
    )  # fmt: skip
    return db.RolloutRow(**{**base, **over})


def test_store_keeps_the_state_and_every_decision(store_backend: str) -> None:
    store = Store.open()  # SQLite, then a real PostgreSQL (tests/pg.py)
    assert store.backend == store_backend
    try:
        row = db.create(store, _row(), "deploy /m")
        assert row.id > 0 and row.state == "starting" and row.decisions[0]["action"] == "start"
        assert db.active_for(store, "ep", "local") is not None
        row = db.transition(
            store, row.id, ("starting", 0), "deploy", "canary v2", {"weight": 10},
            state="baking", canary_version="v2", baseline={"requests": 3},
        )  # fmt: skip
        assert (row.state, row.canary_version, row.baseline) == ("baking", "v2", {"requests": 3})
        with pytest.raises(Conflict, match="moved on"):  # a stale controller cannot act twice
            db.transition(store, row.id, ("starting", 0), "deploy", "again", {})
        db.update(store, row.id, last_check={"requests": 7})
        row = db.transition(store, row.id, ("baking", 0), "rollback", "error_rate 12%",
                            {"errors": 12}, state="rolling_back")  # fmt: skip
        db.update(store, row.id, state="rolled_back")
        final = db.get(store, row.id)
        assert [d["action"] for d in final.decisions] == ["start", "deploy", "rollback"]
        assert final.decisions[-1]["numbers"] == {"errors": 12}
        assert final.last_check == {"requests": 7} and final.to_dict()["id"] == f"r-{row.id}"
        assert db.active_for(store, "ep", "local") is None
        assert [r.id for r in db.list_rollouts(store, "ep")] == [row.id]
        with pytest.raises(NotFoundLocally, match="r-999"):
            db.get(store, 999)
    finally:
        store.close()


# ---- the front's routing and counters -------------------------------------------------------
def test_weighted_schedule_is_exact_and_interleaved() -> None:
    turns = schedule({"v1": 90, "v2": 10})
    assert Counter(turns) == {"v1": 9, "v2": 1} and len(turns) == 10
    turns = schedule({"a": 50, "b": 30, "c": 20})
    assert Counter(turns) == {"a": 5, "b": 3, "c": 2}
    assert "b" in turns[:3] and turns[0] != turns[1]  # spread, not in runs
    assert schedule({"v1": 100, "v2": 0}) == ["v1"]


def test_upstreams_route_by_weight_and_name_the_version(tmp_path: Path) -> None:
    versions = {"v1": {"weight": 75, "upstreams": ["http://a", "http://b"]},
                "v2": {"weight": 25, "upstreams": ["http://c"]}}  # fmt: skip
    write_upstreams(tmp_path, 4, ["http://a", "http://b", "http://c"], versions=versions)
    up = Upstreams(tmp_path / "upstreams.json")
    up.reload()
    routed = Counter(up.route() for _ in range(400))
    assert routed == {("http://a", "v1"): 150, ("http://b", "v1"): 150, ("http://c", "v2"): 100}
    up.down = {"http://c"}  # the canary is being restarted: its turns go to the stable one
    assert {up.route() for _ in range(8)} <= {("http://a", "v1"), ("http://b", "v1")}


def test_front_histogram_percentiles() -> None:
    c = FrontCounter()
    for ms in [1.0] * 98 + [100.0] * 2:
        c.record(200, ms)
    c.record(503, 1.0)
    assert (c.requests, c.errors) == (101, 1)
    p50, p99 = percentile(c.buckets, 0.5), percentile(c.buckets, 0.99)
    assert p50 is not None and 1.0 <= p50 < 1.25
    assert p99 is not None and 100.0 <= p99 < 125.0
    assert stats.percentile(c.buckets, BOUNDS_MS, 0.99) == p99  # the controller reads alike
