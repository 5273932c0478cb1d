"""The real front (``python -m providers.local.front``) against slow and many clients, on
127.0.0.1, in front of a small real HTTP upstream. Bounded in count and time.

Measured before the connection guard (issue 16), with the front at 256 descriptors: a silent
connection and a slowloris connection (one header byte a second) were each held 40 s of 40
tried; 600 slowloris connections took every descriptor (249 held), 0 of 20 legitimate requests
got through, and ``front.log`` grew by 734 MB in 90 s (``socket.accept() out of system
resource`` with a traceback, in a tight loop). The same probe after: see each test.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from providers.local.clients import HttpClient
from providers.local.endpoint_net import free_port
from providers.local.front import CONTROL_PATH, write_upstreams

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[3]
BODY = b'{"instances": [[1, 2, 3, 4]]}'
PARTIAL_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\n"


class _Upstream(BaseHTTPRequestHandler):
    """Answers every POST in one write (no Nagle stall); ``?sleep=S`` answers after S seconds."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "sleep=" in self.path:
            time.sleep(float(self.path.rpartition("sleep=")[2]))
        body = b'{"predictions": [0]}'
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        self.wfile.write(head % len(body) + body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class Front:
    """A real front process; ``nofile`` caps its descriptors like a small ``ulimit -n``."""

    def __init__(self, state_dir: Path, upstreams: list[str], *args: str, nofile: int = 256):
        write_upstreams(state_dir, 1, upstreams)
        self.port = free_port()
        self.log = state_dir / "front.log"
        argv = [sys.executable, "-m", "providers.local.front", "--port", str(self.port),
                "--state-dir", str(state_dir), "--log-file", str(self.log), *args]  # fmt: skip

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(state_dir / "front.out", "ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                break
            except OSError:
                assert self.proc.poll() is None, (state_dir / "front.out").read_text()
                assert time.monotonic() < deadline, "the front did not start"
                time.sleep(0.05)

    def control(self) -> dict[str, Any]:
        status, body = HttpClient().request("GET", f"http://127.0.0.1:{self.port}{CONTROL_PATH}")
        assert status == 200
        return dict(json.loads(body))

    def held(self) -> int:
        """Client connections the front holds open, from the kernel."""
        conns = psutil.Process(self.proc.pid).net_connections("inet")
        return sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == self.port for c in conns)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _request(port: int, path: str = "/predict", timeout: float = 5.0) -> bytes:
    """One request on its own connection; the raw response (b"" if none came)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n"
        )
        s.sendall(head.encode() + BODY)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _legit(port: int, n: int = 20) -> int:
    ok = 0
    for _ in range(n):
        with contextlib.suppress(OSError):
            ok += _request(port, timeout=3).startswith(b"HTTP/1.1 200")
    return ok


def _held_for(port: int, trickle: bool, limit: float) -> tuple[float, bytes]:
    """How long the front keeps one connection that never completes a request (bounded by
    ``limit``), and what it said when it closed it."""
    s = socket.create_connection(("127.0.0.1", port), 5)
    started = time.monotonic()
    if trickle:
        s.sendall(PARTIAL_HEAD)
    s.settimeout(0.25)
    said = b""
    with s:
        while time.monotonic() - started < limit:
            try:
                if trickle:
                    s.sendall(b"X")  # one more header byte, never the end of the head
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            said += chunk
    return time.monotonic() - started, said


def test_slowloris_is_cut_and_legitimate_requests_pass(upstream: str, tmp_path: Path) -> None:
    front = Front(tmp_path, [upstream], "--header-timeout", "2", "--idle-timeout", "3")
    try:
        assert _legit(front.port) == 20
        idle, _ = _held_for(front.port, trickle=False, limit=20)
        slow, said = _held_for(front.port, trickle=True, limit=20)
        assert 2.5 <= idle < 5, f"a silent connection was held {idle:.1f}s (idle timeout 3 s)"
        assert 1.5 <= slow < 4, f"a slowloris connection was held {slow:.1f}s (header 2 s)"
        assert said.startswith(b"HTTP/1.1 408"), said
        # 600 slowloris connections against 256 descriptors.
        cap = front.control()["connections"]["cap"]
        attackers = []
        for _ in range(600):
            s = socket.create_connection(("127.0.0.1", front.port), 5)
            s.sendall(PARTIAL_HEAD)
            attackers.append(s)
        time.sleep(0.5)
        held, fds = front.held(), psutil.Process(front.proc.pid).num_fds()
        started = time.monotonic()
        ok = _legit(front.port)
        took = time.monotonic() - started
        time.sleep(3)  # past the header timeout: the slow ones are cut
        after = front.held()
        counts = front.control()["connections"]
        for s in attackers:
            s.close()
        print(
            f"\n600 slowloris vs 256 fds: held {held} (cap {cap}), {fds} fds, legit {ok}/20 in "
            f"{took:.2f}s, held {after} after the header timeout; single slow conn {slow:.1f}s, "
            f"idle {idle:.1f}s; evicted {counts['evicted']}, log {front.log.stat().st_size} B"
        )
        assert held <= cap < 256 and fds < 256
        assert ok == 20, "legitimate requests got through the attack"
        assert after <= 1
        assert counts["evicted"] >= 600 - cap
        log = front.log.read_text()
        assert "Too many open files" not in log and len(log) < 20_000
    finally:
        front.stop()


def test_all_slots_busy_get_a_fast_503(upstream: str, tmp_path: Path) -> None:
    """Eviction spares connections whose request is at an upstream: with every slot busy, a new
    connection is told so at once."""
    front = Front(tmp_path, [upstream], "--max-connections", "2")
    try:
        slow = [
            threading.Thread(target=_request, args=(front.port, "/predict?sleep=3"))
            for _ in range(2)
        ]
        for t in slow:
            t.start()
        deadline = time.monotonic() + 5
        while front.held() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        started = time.monotonic()
        answer = _request(front.port, timeout=3)
        took = time.monotonic() - started
        for t in slow:
            t.join(10)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer, answer
        assert took < 1.0, f"the 503 took {took:.2f}s"
        assert _request(front.port).startswith(b"HTTP/1.1 200")  # room again
    finally:
        front.stop()


def test_a_body_that_never_completes_gets_408(upstream: str, tmp_path: Path) -> None:
    front = Front(tmp_path, [upstream], "--body-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", front.port), 5) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + BODY
            )
            s.settimeout(5)
            started = time.monotonic()
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.monotonic() - started < 3
    finally:
        front.stop()


def test_front_log_is_rate_limited(tmp_path: Path) -> None:
    """Every request to a dead upstream logs a warning per attempt (4 attempts, 0.5 s): before,
    40 requests wrote 160 such lines; the rate limit keeps 20 per message per minute."""
    front = Front(tmp_path, [f"http://127.0.0.1:{free_port()}"])
    try:
        url = f"http://127.0.0.1:{front.port}/predict"
        for _ in range(40):
            assert HttpClient().request("POST", url, BODY)[0] == 502
        log = front.log.read_text()
        print(f"\n40 requests to a dead upstream: front.log {len(log)} bytes")
        assert log.count(" failed: ConnectionRefusedError") == 20  # the upstream client's error
    finally:
        front.stop()


LOG_SCRIPT = """
import logging, sys
from pathlib import Path
from providers.local import front_log
front_log.setup(Path(sys.argv[1]), max_bytes=4000, backups=2)
for i in range(400):
    logging.getLogger(f"noisy{i % 40}").warning("line %d %s", i, "x" * 100)
print("after the rollovers, on stdout", flush=True)
sys.stderr.write("and on stderr\\n")
"""


def test_front_log_rotates_and_stdout_follows(tmp_path: Path) -> None:
    log = tmp_path / "front.log"
    with open(log, "ab") as out:  # as the deployer starts the front: stdout on the log
        done = subprocess.run(
            [sys.executable, "-c", LOG_SCRIPT, str(log)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["front.log", "front.log.1", "front.log.2"]
    assert all((tmp_path / f).stat().st_size < 4200 for f in files)
    current = log.read_text()
    assert "after the rollovers, on stdout" in current and "and on stderr" in current


def test_rate_limit_counts_what_it_drops() -> None:
    import logging

    from providers.local.front_log import RateLimit

    now = [0.0]
    limit = RateLimit(burst=3, window=10, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, __file__, 1, msg, (), None)

    passed = [limit.filter(record("same %d")) for _ in range(100)]
    assert sum(passed) == 3
    assert limit.filter(record("another")), "each message has its own budget"
    now[0] = 11
    later = record("same %d")
    assert limit.filter(later) and later.msg.startswith("[97 similar message(s) dropped")


def test_the_cap_follows_the_descriptor_limit() -> None:
    from providers.local.front_conn import FD_RESERVE, Limits

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = min(1000, (soft - FD_RESERVE) // 2)
    assert Limits(max_connections=1000).effective_cap() == max(1, expected)
