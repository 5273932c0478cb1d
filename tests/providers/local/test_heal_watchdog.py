"""The front's watchdog against a stand-in server that behaves like ``bentoml serve`` where it
matters (real processes on 127.0.0.1, a few seconds in all): the parent binds the port and a
worker in a session of its own serves on it, so a ``kill -9`` of the parent leaves an orphan
that keeps the port. The real BentoML arbiter is killed in test_heal_endpoints.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from providers.local import endpoint_procs
from providers.local.clients import HttpClient
from providers.local.endpoint_net import free_port, http_url
from providers.local.front import write_upstreams
from providers.local.front_log import copy_truncate
from providers.local.front_watch import HEALTH_FILE, backoff

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[3]

STAND_IN = """
import http.server, os, sys, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _answer(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"predictions": [%d]}' % os.getpid()
        self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
    do_GET = do_POST = _answer
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)  # the "arbiter" binds
if os.fork() == 0:
    os.setsid()  # the "worker": a session of its own, serving the inherited socket
    server.serve_forever()
else:
    while True:
        time.sleep(1)
"""


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A front watching one stand-in server, as a deploy would leave them."""
    port = free_port()
    tag = endpoint_procs.tag(tmp_path, "stand-in", "server-g1-0")
    server = endpoint_procs.spawn(
        [sys.executable, "-c", STAND_IN, str(port)],
        {endpoint_procs.ENV_TAG: tag},
        str(tmp_path),
        tmp_path / "server-g1-0.log",
    )
    url = http_url("127.0.0.1", port)
    _wait(lambda: _get(url) == 200, 20, "the stand-in server to answer")
    write_upstreams(tmp_path, 1, [url], [{"url": url, **server}])
    front_port = free_port()
    front = endpoint_procs.spawn(
        [sys.executable, "-m", "providers.local.front", "--port", str(front_port),
         "--state-dir", str(tmp_path), "--log-file", str(tmp_path / "front.log")],
        {endpoint_procs.ENV_TAG: endpoint_procs.tag(tmp_path, "stand-in", "front")},
        str(REPO),
        tmp_path / "front.log",
    )  # fmt: skip
    front_url = http_url("127.0.0.1", front_port)
    _wait(lambda: _health(tmp_path).get("generation") == 1, 20, "the front's first health")
    try:
        yield {"dir": tmp_path, "url": url, "front": front_url, "server": server, "tag": tag}
    finally:
        endpoint_procs.stop([front], None, grace=5)
        endpoint_procs.stop([], endpoint_procs.tag(tmp_path, "stand-in", ""), grace=5)


def _get(url: str) -> int | None:
    try:
        return HttpClient().request("GET", url + "/readyz", timeout=1)[0]
    except OSError:
        return None


def _health(state_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((state_dir / HEALTH_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _wait(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def _server(ep: dict[str, Any]) -> dict[str, Any]:
    return dict(_health(ep["dir"])["servers"][ep["url"]])


def test_a_killed_arbiter_is_restarted_and_its_orphan_stopped(endpoint: dict[str, Any]) -> None:
    ep = endpoint
    parent = psutil.Process(ep["server"]["pid"])
    (orphan,) = parent.children()
    os.kill(parent.pid, signal.SIGKILL)
    assert _get(ep["url"]) == 200, "the orphaned worker still holds the port"
    took = _wait(
        lambda: _server(ep)["restarts"] == 1 and _server(ep)["state"] == "up", 30, "a restart"
    )
    assert not orphan.is_running() or orphan.status() == psutil.STATUS_ZOMBIE
    restarted = _server(ep)
    assert restarted["pid"] != parent.pid and endpoint_procs.alive(restarted)  # type: ignore[arg-type]
    # Exactly the environment it had, read from the kernel: the same tag, so undeploy finds it.
    env = psutil.Process(restarted["pid"]).environ()
    assert env[endpoint_procs.ENV_TAG] == ep["tag"]
    status, body = HttpClient().request("POST", ep["front"] + "/predict", b"{}", timeout=5)
    assert status == 200 and json.loads(body)["predictions"] != [orphan.pid]
    print(f"\nkill -9 of the arbiter: serving again after {took:.1f}s, orphan stopped")


def test_restarts_back_off_and_callers_get_503_meanwhile(endpoint: dict[str, Any]) -> None:
    ep = endpoint
    delays = []
    for n in (1, 2, 3):
        killed = _server(ep) if n > 1 else ep["server"]
        endpoint_procs.stop([killed], ep["tag"], grace=2, exact=True)  # parent and worker
        started = time.monotonic()
        if n == 3:  # down for backoff(2) = 2 s: the front says so rather than hang or 502
            time.sleep(0.5)
            status, body = HttpClient().request("POST", ep["front"] + "/predict", b"{}")
            assert status == 503 and b"restarting" in body, body
        _wait(lambda n=n: _server(ep)["restarts"] == n, 30, f"restart {n}")
        delays.append(time.monotonic() - started)
        _wait(lambda: _server(ep)["state"] == "up", 30, "the restarted server to be up")
    print(f"\nseconds from kill to restart: {[round(d, 1) for d in delays]}")
    assert delays[0] < 2.5, "the first restart is immediate (within a watchdog tick)"
    assert delays[1] >= backoff(1) and delays[2] >= backoff(2)


def test_copy_truncate_rotates_a_log_another_process_appends_to(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfor i in range(300):\n"
         "    print('x' * 99, flush=True); time.sleep(0.002)"],
        stdout=open(log, "ab"),  # noqa: SIM115 (the child keeps it: O_APPEND, like spawn)
    )  # fmt: skip
    rotated = 0
    while writer.poll() is None:
        rotated += copy_truncate(log, max_bytes=5000, backups=2)
        time.sleep(0.01)
    assert rotated >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "server.log",
        "server.log.1",
        "server.log.2",
    ]
    assert log.stat().st_size < 30_000  # the live file starts over: no hole, no unbounded growth
