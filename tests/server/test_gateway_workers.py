"""``mlcloud server --workers 2``: each worker answers ``/metrics`` and the rollout
controller's numbers for the whole server (``metrics_shared``), not for its own share.

Unit part: two workers' series in one process, the other's through its file, as a worker
reads them. Server part: a real two-worker server before a stand-in local endpoint
(``standin.py``), predictions on fresh connections (the kernel spreads them over the workers),
then every scrape, whichever worker answers it, counts all of them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlcloud.server import metrics_shared
from mlcloud.server.metrics import Metrics
from tests.server.gateway_helpers import predict
from tests.server.serverproc import RunningServer, start_server
from tests.server.standin import Model, running_front

pytestmark = pytest.mark.timeout(180)
NAME = "shared"


def test_a_worker_adds_the_others_series(tmp_path: Path) -> None:
    now = [1000.0]
    other, mine = Metrics(clock=lambda: now[0]), Metrics(clock=lambda: now[0])
    for ms in (10.0, 10.0, 10.0, 900.0):
        other.observe("e", "v1", 200, ms / 1000)
    other.observe("e", "v1", 502, 0.001, "UpstreamError")
    mine.observe("e", "v1", 200, 0.010)
    mine.observe("e", "v2", 200, 0.020)
    (tmp_path / "4242.json").write_text(json.dumps(metrics_shared.state(other)))
    mine.shared = tmp_path  # as share() sets it, without the writing thread
    both = mine.version_stats("e", "v1")
    assert (both.requests, both.errors) == (6, 1)
    assert both.p50_ms is not None and 9 < both.p50_ms < 12
    assert mine.version_stats("e", "v2").requests == 1
    now[0] += 120  # past the window: nobody's slots count
    assert mine.version_stats("e", "v1").requests == 0
    text = mine.exposition().decode()
    assert _sample(text, "mlcloud_predict_requests_total", version="v1", code="200") == 4 + 1
    assert _sample(text, "mlcloud_predict_errors_total", version="v1") == 1
    assert _sample(text, "mlcloud_predict_latency_seconds_count", version="v1") == 6
    assert _sample(text, "mlcloud_predict_latency_seconds_bucket", version="v1", le="+Inf") == 6
    assert "_created" not in text


def _sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("gw-workers")
    (home / "tmp").mkdir()
    model = Model("v1")
    with running_front(home, NAME, {"v1": model}, {"v1": 100}):
        srv = start_server(home, "--workers", "2", env={"TMPDIR": str(home / "tmp")})
        try:
            yield srv
        finally:
            srv.stop()
            model.stop()


def test_every_worker_counts_the_whole_servers_predictions(server: RunningServer) -> None:
    (shared,) = (server.home / "tmp").glob("mlcloud-server-metrics-*")
    sent = 0
    own: list[float] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until both workers answered some (fresh connections)
        for _ in range(10):
            assert predict(server.url, NAME, b'{"instances": [[1]]}').status_code == 200
        sent += 10
        time.sleep(1.5)  # each worker writes its numbers once a second
        own = [_count(json.loads(f.read_text())) for f in sorted(shared.glob("*.json"))]
        if len(own) == 2 and sum(own) == sent and min(own) > 0:
            break
    assert len(own) == 2 and min(own) > 0 and sum(own) == sent, (own, sent)
    counts = [_scrape(server) for _ in range(8)]  # whichever worker answers: all of them
    assert counts == [float(sent)] * 8, (counts, own)
    print(f"\n{sent} predictions, by worker {own}; every scrape counted {sent}")


def _count(state: dict[str, object]) -> float:
    """One worker's own prediction count for the endpoint, from its shared file."""
    families = state["families"]
    assert isinstance(families, dict)
    samples = families["mlcloud_predict_requests"]["samples"]
    return sum(float(value) for name, labels, value in samples
               if name.endswith("_total") and labels.get("endpoint") == NAME)  # fmt: skip


def _scrape(server: RunningServer) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.findall(rf'mlcloud_predict_requests_total{{[^}}]*endpoint="{NAME}"[^}}]*}} (\S+)',
                       text)  # fmt: skip
    return sum(float(v) for v in found)
