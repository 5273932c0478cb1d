"""The front's HTTP/1.1 server half (``front_http.py``) as clients see it, on raw sockets: one
real front process in front of an echo upstream that says what it received. Fast, no BentoML.

What each test keeps is what aiohttp's server did for the front before: keep-alive (and
HTTP/1.0's), pipelining, chunked bodies, ``Expect: 100-continue``, ``HEAD``, 400/413, the
hop-by-hop headers, and a SIGTERM that lets the request in flight finish. Three answers differ
on purpose: a ``HEAD`` now says the upstream's Content-Length (aiohttp's server left it out), a
malformed request gets the front's JSON error, as every other error (aiohttp: text), and a
client that half-closes after its request gets its answer (aiohttp closed at the EOF).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from providers.local.endpoint_net import free_port
from providers.local.front import CONTROL_PATH, write_upstreams
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(60)
MAX_BODY = 1000


class _Echo(BaseHTTPRequestHandler):
    """Answers what it received: method, target, headers, body; ``?sleep=S`` waits first."""

    protocol_version = "HTTP/1.1"

    def _answer(self, with_body: bool) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "sleep=" in self.path:
            time.sleep(float(self.path.rpartition("sleep=")[2]))
        said = {"method": self.command, "target": self.path, "headers": self.headers.items(),
                "body": body.decode()}  # fmt: skip
        answer = json.dumps(said).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Upstream", "echo")
        self.send_header("Keep-Alive", "timeout=5")  # hop-by-hop: must not reach the client
        self.end_headers()
        if with_body:
            self.wfile.write(answer)

    def do_POST(self) -> None:
        self._answer(True)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _start(state: Path, upstream: str, token: str = "") -> tuple[int, subprocess.Popen[bytes]]:
    write_upstreams(state, 1, [upstream])
    port = free_port()
    argv = [sys.executable, "-m", "providers.local.front", "--port", str(port), "--state-dir",
            str(state), "--max-body", str(MAX_BODY), "--log-file", str(state / "front.log"),
            *(["--token-stdin"] if token else [])]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(token.encode() + b"\n")
    proc.stdin.close()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(port) as c:
                c.send(f"GET {CONTROL_PATH} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
                if c.read()[0] == 200:
                    return port, proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the front did not start"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, upstream: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port, proc = _start(tmp_path_factory.mktemp("front"), upstream)
    yield port, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


class Client:
    """A raw HTTP/1.1 client connection reading responses off its own buffer (pipelining)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.sock.settimeout(5)
        self.buf = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def more(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed; unread: {self.buf!r}"
        self.buf += chunk

    def read(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers (lower-case names), body (by Content-Length)."""
        while b"\r\n\r\n" not in self.buf:
            self.more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        pairs = (line.partition(":") for line in lines[1:])
        headers = {k.strip().lower(): v.strip() for k, _, v in pairs}
        length = 0 if head_only else int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self.more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def _post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body  # fmt: skip


def test_keep_alive_pipelining_and_what_is_forwarded(front: tuple[int, Any]) -> None:
    port, _ = front
    with Client(port) as c:
        # two requests in one write: answered in order on the same connection
        c.send(_post("/predict?a=1&b=%2F", b'{"n": 1}', "Authorization: Bearer x\r\n"
                     "Connection: keep-alive\r\nTE: trailers\r\nX-Caller: c1\r\n")
               + _post("/predict", b'{"n": 2}'))  # fmt: skip
        (status, headers, body), second = c.read(), c.read()
        said = json.loads(body)
        assert status == 200 and headers["x-mlcloud-version"] == "v1"
        assert headers["x-upstream"] == "echo" and "keep-alive" not in headers
        assert said["method"] == "POST" and said["target"] == "/predict?a=1&b=%2F"
        sent = {k.lower(): v for k, v in said["headers"]}
        assert sent["x-caller"] == "c1" and sent["content-length"] == "8"
        assert sent["host"].startswith("127.0.0.1:")
        assert not {"authorization", "connection", "te", "expect"} & set(sent)
        assert json.loads(second[2])["body"] == '{"n": 2}'
        c.send(_post("/predict", b"{}"))  # the connection stays open for a third
        assert c.read()[0] == 200
        c.send(_post("http://example.test/predict?x=1", b"{}"))  # absolute-form: origin-form
        assert json.loads(c.read()[2])["target"] == "/predict?x=1"


def test_chunked_body_and_100_continue(front: tuple[int, Any]) -> None:
    port, _ = front
    with Client(port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n')  # fmt: skip
        status, _, body = c.read()
        said = json.loads(body)
        assert status == 200 and said["body"] == '{"a": 1}'
        assert {k.lower(): v for k, v in said["headers"]}["content-length"] == "8"
        # Expect: 100-continue: the interim answer first, and the body only then
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n"
               b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        c.more()
        interim, c.buf = c.buf, b""
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        c.send(b'{"b":2}')
        status, _, body = c.read()
        assert status == 200 and json.loads(body)["body"] == '{"b":2}'


def test_head_has_the_upstreams_length_and_no_body(front: tuple[int, Any]) -> None:
    port, _ = front
    with Client(port) as c:
        c.send(b"HEAD /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = c.read(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0
        assert headers["x-mlcloud-version"] == "v1"
        c.send(_post("/predict", b"{}"))  # no stray body bytes before the next answer
        status, _, body = c.read()
        assert status == 200 and json.loads(body)["method"] == "POST"


def test_http10_closes_unless_keep_alive(front: tuple[int, Any]) -> None:
    port, _ = front
    with Client(port) as c:
        c.send(_post("/predict", b"{}", version="1.0"))
        status, headers, _ = c.read()
        assert status == 200 and headers.get("connection", "close") == "close" and c.closed()
    with Client(port) as c:
        for _ in range(2):
            c.send(_post("/predict", b"{}", "Connection: keep-alive\r\n", version="1.0"))
            status, headers, _ = c.read()
            assert status == 200 and headers["connection"] == "keep-alive"


def test_too_large_and_malformed(front: tuple[int, Any]) -> None:
    port, _ = front
    big = b"x" * (MAX_BODY + 1)
    announced = _post("/predict", big)
    found_out = (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))  # fmt: skip
    for request in (announced, found_out):
        with Client(port) as c:
            c.send(request)
            status, _, body = c.read()
            assert status == 413
            assert "larger than the limit" in json.loads(body)["error"]
    with Client(port) as c:
        c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
               b"Content-Length: 3\r\n\r\n{}")  # fmt: skip
        status, _, body = c.read()
        assert status == 400 and "malformed" in json.loads(body)["error"] and c.closed()


def test_a_half_closed_client_still_gets_its_answer(front: tuple[int, Any]) -> None:
    port, _ = front
    with Client(port) as c:
        c.send(_post("/predict?sleep=0.2", b"{}"))
        c.sock.shutdown(socket.SHUT_WR)  # EOF after the request: the answer still comes
        status, headers, _ = c.read()
        assert status == 200 and headers["connection"] == "close" and c.closed()


def test_a_bad_token_is_refused_at_the_head(upstream: str, tmp_path: Path) -> None:
    """401 from the head alone: a refused body is never buffered (nor asked for with
    100-continue), and the connection stays usable."""
    token = "Zq3xY8vLr2NwKp5TbHc7JdFm9GsAe4Ru"
    port, proc = _start(tmp_path, upstream, token)
    try:
        with Client(port) as c:
            c.send(_post("/predict", b"x" * (MAX_BODY // 2), "Authorization: Bearer nope\r\n"))
            status, headers, body = c.read()
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            assert "bearer token" in json.loads(body)["error"]
            c.send(_post("/predict", b"{}", f"Authorization: Bearer {token}\r\n"))
            assert c.read()[0] == 200
        with Client(port) as c:
            c.send(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
                   b"Expect: 100-continue\r\n\r\n")  # fmt: skip
            status, headers, _ = c.read()
            assert status == 401 and headers["connection"] == "close" and c.closed()
    finally:
        proc.terminate()
        proc.wait(10)


def test_sigterm_lets_the_request_in_flight_finish(front: tuple[int, Any]) -> None:
    """Last in this module: it stops the front."""
    port, proc = front
    with Client(port) as c, Client(port) as idle:
        c.send(_post("/predict?sleep=1", b"{}"))
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        status, _, body = c.read()
        assert status == 200 and json.loads(body)["target"] == "/predict?sleep=1"
        assert idle.closed()
    assert proc.wait(10) == 0
