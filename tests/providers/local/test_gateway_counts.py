"""The counts the server's gateway keeps for a local endpoint it reaches directly
(``direct_route.py``) and how the front adds them to its ``/-/stats`` (``GatewayCounts``):
counted from when the front started, like its own; files, not mocks."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from providers.local import direct_route
from providers.local.front_stats import GATEWAY_STATS_DIR, Counter, GatewayCounts
from providers.local.front_upstreams import write_upstreams

DEAD_PID = 2**22 + 1  # above the usual pid_max: no process has it


def write(directory: Path, pid: int, started: float, requests: int, errors: int = 0) -> None:
    counter = Counter()
    for i in range(requests):
        counter.record(500 if i < errors else 200, 1.0)
    data = {"pid": pid, "started": started, "by_url": {"http://u1": {
        "requests": counter.requests, "errors": counter.errors, "unreachable": 0,
        "buckets": counter.buckets}}}  # fmt: skip
    directory.mkdir(exist_ok=True)
    (directory / f"{pid}.json").write_text(json.dumps(data))


def test_counted_from_when_the_front_started(tmp_path: Path) -> None:
    gw = tmp_path / GATEWAY_STATS_DIR
    write(gw, os.getpid(), 1.0, requests=7, errors=2)  # before the front started
    write(gw, DEAD_PID, 1.0, requests=50)  # a gateway gone before the front started
    counts = GatewayCounts(gw)
    assert not (gw / f"{DEAD_PID}.json").exists()
    assert counts.counters()["http://u1"].requests == 0
    write(gw, os.getpid(), 1.0, requests=10, errors=3)
    got = counts.counters()["http://u1"]
    assert (got.requests, got.errors, sum(got.buckets)) == (3, 1, 3)
    # the same pid, another process (it restarted): all it counted is new
    write(gw, os.getpid(), 2.0, requests=4)
    assert counts.counters()["http://u1"].requests == 4
    (gw / "12.json").write_text("{not json")  # unreadable: left out
    assert counts.counters()["http://u1"].requests == 4


def test_the_route_writes_its_counts_within_a_second_and_leaves_out_a_refusing_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct_route, "FLUSH_EVERY", 0.05)
    monkeypatch.setattr(direct_route, "RETRY_AFTER", 0.2)
    assert direct_route.for_endpoint(tmp_path, 1.0) is None  # nothing published: the front's
    versions = {"v1": {"weight": 50, "upstreams": ["http://a"]},
                "v2": {"weight": 50, "upstreams": ["http://b"]}}  # fmt: skip
    write_upstreams(tmp_path, 1, ["http://a", "http://b"], versions=versions)
    route = direct_route.for_endpoint(tmp_path, 1.0)
    assert route is not None and direct_route.for_endpoint(tmp_path, 1.0) is route

    async def traffic() -> None:
        assert [route.route() for _ in range(4)] == [("http://a", "v1"), ("http://b", "v2")] * 2
        route.answered("http://a", 200, 2.0)
        route.unreachable("http://b")
        assert [route.route() for _ in range(3)] == [("http://a", "v1")] * 3  # b left out
        await asyncio.sleep(0.1)

    asyncio.run(traffic())
    data = json.loads((tmp_path / GATEWAY_STATS_DIR / f"{os.getpid()}.json").read_text())
    assert data["by_url"]["http://a"]["requests"] == 1
    assert data["by_url"]["http://b"]["unreachable"] == 1
    time.sleep(0.25)
    assert {route.route()[0] for _ in range(2)} == {"http://a", "http://b"}  # tried again


def test_a_re_created_endpoint_is_routed_afresh(tmp_path: Path) -> None:
    """Undeployed and deployed again, an endpoint's generations start over: its routing is
    read anew though the generation number is the same."""
    write_upstreams(tmp_path, 1, ["http://old"])
    route = direct_route.for_endpoint(tmp_path, 1.0)
    assert route is not None and route.route() == ("http://old", "v1")
    write_upstreams(tmp_path, 1, ["http://new"])
    assert direct_route.for_endpoint(tmp_path, 1.0) is route
    assert direct_route.for_endpoint(tmp_path, 2.0) is route
    assert route.route() == ("http://new", "v1")
