"""``mlcloud monitor`` against a real team server gives the same output as run locally.

One store (MLCLOUD_HOME) and one real ``mlcloud server`` on it; an endpoint whose captured
requests (files in the local servers' format) drifted on ``f2``. The check runs on the server
(``/v1/monitor``), the CLI prints the table / JSON / Prometheus gauges and writes the HTML
report from its result: the same bytes as when the CLI checks locally."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.store import Store
from providers.local.capture import capture_dir
from tests.monitor.helpers import gaussian_model, shifted, write_capture
from tests.server.serverproc import RunningServer, cli, start_server, token

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with endpoint ``gauss`` (its model's baseline: N(0, 1) features) and 500
    captured requests a minute old whose ``f2`` moved by 1.0."""
    home = tmp_path_factory.mktemp("server-monitor")
    model = gaussian_model(home / "model", rows=2000)
    store = Store.open(home)
    try:
        spec = {"name": "gauss", "model": str(model), "capture": {"sample": 1.0}}
        store.put_endpoint(EndpointRecord(
            name="gauss", provider="local", type="local", state=EndpointState.READY,
            model=str(model), spec=spec,
        ))  # fmt: skip
    finally:
        store.close()
    rows = shifted(500, 1.0, seed=14)
    write_capture(capture_dir(home, "gauss"), rows, [0] * 500, time.time() - 60)
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    srv = start_server(home)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reader(home: Path) -> str:
    return token(home, "dash", "read")  # a check is a read


def both(home: Path, server: RunningServer, tok: str, *args: str) -> tuple[int, str, str]:
    local = cli(home, *args)
    remote = cli(home, *args, MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=tok)
    assert _same(remote) == _same(local), args
    return _same(local)


def _same(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """The output, with the window's ends (each check ends its window when it runs) and the
    capture volume's bucket edges (from them) set aside in a JSON result."""
    out = done.stdout
    if out.startswith("{"):
        data = json.loads(out)
        data.update(since=None, until=None, volume={**data["volume"], "edges": None})
        out = json.dumps(data, indent=2)
    return done.returncode, out, done.stderr


def test_check_same_output(home: Path, server: RunningServer, reader: str) -> None:
    code, table, _ = both(home, server, reader, "monitor", "gauss")
    assert code == 0 and "endpoint gauss: 500 captured rows" in table, table
    assert "drift in 1 feature(s): f2" in table
    code, answer, _ = both(home, server, reader, "monitor", "gauss", "-o", "json")
    assert json.loads(answer)["drifted"] == ["f2"]
    tuned = ("monitor", "gauss", "--threshold", "f2=0.9", "--method", "f1=psi",
             "--correction", "bonferroni", "--alpha", "0.01", "-o", "json")  # fmt: skip
    result = json.loads(both(home, server, reader, *tuned)[1])
    assert result["correction"] == "bonferroni" and result["alpha"] == 0.01
    f1, f2 = result["features"][1], result["features"][2]
    assert f1["method"] == "psi" and f2["threshold"] == 0.9
    assert both(home, server, reader, "monitor", "gauss", "--fail-on-drift")[0] == 1
    gauges = both(home, server, reader, "monitor", "gauss", "--prometheus", "-")[1]
    assert 'feature="f2"' in gauges


def test_report_written_here_from_the_servers_result(
    home: Path, server: RunningServer, reader: str, tmp_path: Path
) -> None:
    local, remote = tmp_path / "local.html", tmp_path / "remote.html"
    done = cli(home, "monitor", "gauss", "--report", str(local))
    sent = cli(home, "monitor", "gauss", "--report", str(remote),
               MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=reader)  # fmt: skip
    assert done.returncode == sent.returncode == 0, sent.stderr
    assert sent.stdout.replace(str(remote), "R") == done.stdout.replace(str(local), "R")
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")  # the window's ends, to the minute
    assert stamp.sub("<t>", remote.read_text()) == stamp.sub("<t>", local.read_text())


def test_history_and_errors_same_output(home: Path, server: RunningServer, reader: str) -> None:
    code, _, err = both(home, server, reader, "monitor", "gauss", "--history")
    assert code == 0 and err.startswith("no scheduled checks of gauss yet")
    assert both(home, server, reader, "monitor", "gauss", "--history", "-o", "json")[1] == "[]\n"
    code, _, err = both(home, server, reader, "monitor", "nope")
    assert code == 2 and err.startswith("error:"), err
    code, _, err = both(home, server, reader, "monitor", "gauss", "--baseline", "nosuch:1")
    assert code == 2 and err.startswith("error:"), err
    code, _, err = both(home, server, reader, "monitor", "gauss", "--method", "f1=nosuch")
    assert code == 2 and err.startswith("error:"), err
