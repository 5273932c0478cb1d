"""Operating the server: it refuses to listen beyond loopback without a token, shuts down
gracefully (an in-flight request finishes), and /readyz says when the store is unreachable."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.server.serverproc import cli, free_port, start_server, token

pytestmark = pytest.mark.timeout(180)
#: uvicorn shuts down gracefully on SIGTERM, then re-raises it: the exit status says SIGTERM
GRACEFUL = (0, -signal.SIGTERM)


def test_refuses_beyond_loopback_without_tokens(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: were the check missing, binding
    # would fail anyway, so nothing is ever exposed; the refusal must come first and say why.
    done = cli(tmp_path, "server", "--host", "192.0.2.1", "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 192.0.2.1 without a token" in done.stderr
    assert "hint: create one first: mlcloud tokens create admin --role admin" in done.stderr
    assert "Uvicorn running" not in done.stderr


def test_open_on_loopback_without_tokens(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with server.client() as http:
            assert http.get("/v1/jobs").status_code == 200  # one user's machine: open
    finally:
        assert server.stop() in GRACEFUL


def test_graceful_shutdown_finishes_in_flight_stream(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    script = (
        "import time\nfor i in range(4):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)\n"
    )
    (tmp_path / "main.py").write_text(script)
    spec = {"name": "slow", "source": str(tmp_path), "command": [sys.executable, "main.py"]}
    http = server.client()
    job_id = http.post("/v1/jobs", json=spec).json()["id"]
    lines: list[str] = []
    started = threading.Event()

    def follow() -> None:
        with http.stream("GET", f"/v1/jobs/{job_id}/logs", params={"follow": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: tick"):
                    started.set()
                if line:
                    lines.append(line)

    reader = threading.Thread(target=follow)
    reader.start()
    assert started.wait(60), "no log line arrived"
    server.proc.send_signal(signal.SIGTERM)  # mid-stream
    reader.join(60)
    assert not reader.is_alive()
    assert server.proc.wait(60) in GRACEFUL
    assert [x for x in lines if x.startswith("data: tick")] == [f"data: tick {i}" for i in range(4)]
    assert lines[-2:] == ["event: end", "data: " + json.dumps({"state": "SUCCEEDED"})]
    with pytest.raises(httpx.TransportError):  # and then it is gone
        httpx.get(server.url + "/healthz", timeout=2)
    logged = [json.loads(x) for x in server.log_text().splitlines() if x.startswith("{")]
    assert any(x["msg"].startswith("stopped") for x in logged)
    http.close()


def test_readyz_fails_when_the_store_is_unreachable(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with server.client() as http:
            assert http.get("/readyz").status_code == 200
            for path in tmp_path.glob("state.db*"):
                path.write_bytes(b"this is not a database" * 512)
            answer = http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["kind"] == "StoreUnavailable"
            assert http.get("/healthz").status_code == 200  # alive, but not ready
    finally:
        server.stop()


def test_predict_rate_limit_per_token(tmp_path: Path) -> None:
    first, second = token(tmp_path, "one", "read"), token(tmp_path, "two", "read")
    server = start_server(tmp_path, "--predict-rate", "1")  # burst 2, then 1 per second
    row = {"instances": [[1.0]]}
    try:
        with server.client(first) as http:
            answers = [http.post("/v1/endpoints/nope:predict", json=row) for _ in range(3)]
            assert [a.status_code for a in answers] == [404, 404, 429]
            refused = answers[2].json()
            assert refused["kind"] == "Throttled" and "'one'" in refused["detail"]
            assert answers[2].headers["retry-after"] == "1"
        with server.client(second) as http:  # a bucket per token
            assert http.post("/v1/endpoints/nope:predict", json=row).status_code == 404
    finally:
        server.stop()
