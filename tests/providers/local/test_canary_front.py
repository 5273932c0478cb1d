"""The front's weighted routing, version header and ``/-/stats``, on a real front process with
two stand-in upstreams (a healthy one and one answering 500): fast, no BentoML."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from providers.local.endpoint_net import free_port
from providers.local.front import STATS_PATH, write_upstreams
from tests.conftest import REPO

TOKEN = "Zq3xY8vLr2NwKp5TbHc7JdFm9GsAe4Ru"


def _upstream(status: int) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = json.dumps({"status": status, "echo": len(body)}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    state = tmp_path_factory.mktemp("front")
    good, good_url = _upstream(200)
    bad, bad_url = _upstream(500)
    versions = {"v1": {"weight": 80, "upstreams": [good_url]},
                "v2": {"weight": 20, "upstreams": [bad_url]}}  # fmt: skip
    write_upstreams(state, 1, [good_url, bad_url], versions=versions)
    port = free_port()
    argv = [sys.executable, "-m", "providers.local.front", "--port", str(port), "--state-dir",
            str(state), "--token-stdin", "--log-file", str(state / "front.log")]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(TOKEN.encode() + b"\n")
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while _get(port, STATS_PATH, TOKEN)[0] != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "the front did not start"
        time.sleep(0.05)
    yield port, state
    proc.terminate()
    proc.wait(10)
    good.shutdown()
    bad.shutdown()


def _get(port: int, path: str, token: str | None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except OSError:
        return 0, None
    finally:
        conn.close()


def test_weights_route_exactly_and_every_answer_names_its_version(
    front: tuple[int, Path],
) -> None:
    port, _ = front
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seen: Counter[tuple[str | None, int]] = Counter()
    for _ in range(100):
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn.request("POST", "/predict", b'{"instances": [[1]]}', headers)
        resp = conn.getresponse()
        assert json.loads(resp.read())["echo"] == 20  # the body went through whole
        seen[(resp.getheader("x-mlcloud-version"), resp.status)] += 1
    conn.close()
    assert seen == {("v1", 200): 80, ("v2", 500): 20}  # one in five, exactly


def test_stats_count_each_version_and_need_the_token(front: tuple[int, Path]) -> None:
    port, state = front
    assert _get(port, STATS_PATH, None)[0] == 401
    assert _get(port, STATS_PATH, "wrong")[0] == 401
    status, stats = _get(port, STATS_PATH, TOKEN)
    assert status == 200 and stats["pid"] and stats["bounds_ms"]
    v1, v2 = stats["versions"]["v1"], stats["versions"]["v2"]
    assert (v1["weight"], v1["requests"], v1["errors"]) == (80, 80, 0)
    assert (v2["weight"], v2["requests"], v2["errors"]) == (20, 20, 20)
    assert sum(v1["buckets"]) == 80 and v1["p50_ms"] is not None and v1["p99_ms"] >= v1["p50_ms"]
    # new weights: the front takes them at once (the control path reloads), counters continue
    urls = [u for v in ("v1", "v2") for u in stats["versions"][v]["upstreams"]]
    write_upstreams(state, 2, urls, versions={
        "v1": {"weight": 100, "upstreams": urls[:1]}, "v2": {"weight": 0, "upstreams": urls[1:]},
    })  # fmt: skip
    status, control = _get(port, "/-/mlcloud/front", TOKEN)
    assert (
        status == 200 and control["generation"] == 2 and control["versions"] == {"v1": 100, "v2": 0}
    )
    assert _get(port, STATS_PATH, TOKEN)[1]["versions"]["v1"]["requests"] == 80
