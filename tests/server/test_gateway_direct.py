"""The gateway sends a local endpoint's predictions straight to its servers (``direct_route``),
with the endpoint's own routing and counts: a real ``mlcloud server``, a real front on the
endpoint's state directory, and two stand-in model servers (plain HTTP, one per version, each
counting what it received and closing every connection, so a stopped one refuses at once).

What is checked is what the far ends received: the canary's exact share, nothing through the
front, the front's ``/-/stats`` counting the gateway's predictions, a weight change followed at
once, and a server that stops costing no prediction (the stand-ins: ``standin.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcloud.server.upstreams import VERSION_HEADER
from providers.local.endpoint_plan import endpoint_dir
from providers.local.front import CONTROL_PATH, STATS_PATH
from tests.server.gateway_helpers import predict
from tests.server.serverproc import RunningServer, start_server
from tests.server.standin import Model, publish, running_front
from tests.server.standin import get as _get

pytestmark = pytest.mark.timeout(180)
NAME = "split"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gw-direct")


@pytest.fixture(scope="module")
def models() -> Iterator[dict[str, Model]]:
    found = {v: Model(v) for v in ("v1", "v2")}
    yield found
    for model in found.values():
        model.server.shutdown()


@pytest.fixture(scope="module")
def front(home: Path, models: dict[str, Model]) -> Iterator[int]:
    """The endpoint's real front, on a 75/25 split, and its record."""
    with running_front(home, NAME, models, {"v1": 75, "v2": 25}) as port:
        yield port


@pytest.fixture(scope="module")
def server(home: Path, front: int) -> Iterator[RunningServer]:
    srv = start_server(home, env={"MLCLOUD_GATEWAY_TARGET_TTL_S": "0.5"})
    yield srv
    srv.stop()


def versions_of(server: RunningServer, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = predict(server.url, NAME, b'{"instances": [[1]]}')
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"predictions": [resp.headers[VERSION_HEADER]]}  # who answered
        seen[resp.headers[VERSION_HEADER]] += 1
    return seen


def test_the_split_is_exact_and_the_front_is_not_crossed(
    server: RunningServer, front: int, models: dict[str, Model]
) -> None:
    versions_of(server, 4)  # the target resolved, connections made
    accepted = _get(front, CONTROL_PATH)["connections"]["accepted"]
    before = {v: m.received for v, m in models.items()}
    seen = versions_of(server, 40)  # ten whole turns of the 3:1 schedule
    assert seen == {"v1": 30, "v2": 10}
    assert {v: m.received - before[v] for v, m in models.items()} == {"v1": 30, "v2": 10}
    # only this test's own look at the front reached it: no prediction went through it
    assert _get(front, CONTROL_PATH)["connections"]["accepted"] == accepted + 1


def test_the_fronts_stats_count_the_gateways_predictions(server: RunningServer, front: int) -> None:
    def requests() -> dict[str, int]:
        data = _get(front, STATS_PATH)["versions"]
        return {v: int(c["requests"]) for v, c in data.items()}

    time.sleep(1.2)  # the gateway writes its counts at most once a second
    before = requests()
    versions_of(server, 8)
    deadline = time.monotonic() + 5
    while requests() != {"v1": before["v1"] + 6, "v2": before["v2"] + 2}:
        assert time.monotonic() < deadline, (before, requests())
        time.sleep(0.1)


def test_a_weight_change_is_followed_at_once(
    server: RunningServer, home: Path, models: dict[str, Model]
) -> None:
    publish(endpoint_dir(home, NAME), 2, models, {"v1": 0, "v2": 100})
    time.sleep(0.1)  # the routing file is looked at every 50 ms
    assert versions_of(server, 10) == {"v2": 10}
    publish(endpoint_dir(home, NAME), 3, models, {"v1": 50, "v2": 50})
    time.sleep(0.1)
    assert versions_of(server, 10) == {"v1": 5, "v2": 5}


def test_a_server_that_stops_costs_no_prediction(
    server: RunningServer, front: int, models: dict[str, Model]
) -> None:
    models["v2"].stop()
    seen = versions_of(server, 20)  # every one answered: by v1, directly or through the front
    assert seen == {"v1": 20}
    deadline = time.monotonic() + 5
    while not _get(front, STATS_PATH)["versions"]["v2"]["unreachable"]:
        assert time.monotonic() < deadline, "the refusal is counted where rollouts read it"
        time.sleep(0.1)


def test_through_the_front_when_told(home: Path, front: int, models: dict[str, Model]) -> None:
    """``MLCLOUD_GATEWAY_DIRECT=0``: every prediction crosses the front (which attributes it)."""
    models["v2"] = Model("v2")  # the previous test stopped it
    publish(endpoint_dir(home, NAME), 4, models, {"v1": 50, "v2": 50})
    srv = start_server(home, env={"MLCLOUD_GATEWAY_DIRECT": "0"})
    try:
        accepted = _get(front, CONTROL_PATH)["connections"]["accepted"]
        before = {v: m.received for v, m in models.items()}
        assert versions_of(srv, 10) == {"v1": 5, "v2": 5}
        assert {v: m.received - before[v] for v, m in models.items()} == {"v1": 5, "v2": 5}
        assert _get(front, CONTROL_PATH)["connections"]["accepted"] > accepted + 1
    finally:
        srv.stop()
