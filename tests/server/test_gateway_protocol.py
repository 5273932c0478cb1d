"""The server's predict protocol (``mlcloud.server.predict_protocol``) over raw sockets.

A real ``mlcloud server`` (``serverproc.start_server``) before a stand-in front on loopback (an
endpoint record points at it). A sized predict is answered on the protocol; the same request
sent chunked goes through uvicorn's ASGI path to the route, so every answer is compared both
ways: status, problem JSON and headers (the date aside). Raw sockets, so the connection itself
is checked: keep-alive, pipelined requests answered in order, ``Connection: close``, other
requests on the connection after a prediction. The auth server (its own home, a token, a
bucket of 3) checks 401 and 429; 403 never applies to predict (``read`` is the lowest role).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httptools
import pytest

from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.store import Store
from tests.server.serverproc import RunningServer, start_server, token
from tests.server.standin import request_body

pytestmark = pytest.mark.timeout(180)
PREDICT = "/v1/endpoints/fake:predict"
HEALTH = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"
ENV = {"MLCLOUD_GATEWAY_MAX_BODY": "4000", "MLCLOUD_GATEWAY_TIMEOUT_S": "0.5"}


class FakeFront(BaseHTTPRequestHandler):
    """By the first instance: "boom" 500, "bad" 422, "sleep" too slow, "nap" 0.2 s; anything
    else echoed, as version "v7"."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        rows = json.loads(request_body(self))["instances"]
        status, body = {"boom": (500, b"boom"), "bad": (422, b'{"error": "bad rows"}')}.get(
            str(rows[0]), (200, json.dumps({"predictions": rows}).encode())
        )
        time.sleep({"sleep": 1.5, "nap": 0.2}.get(str(rows[0]), 0))
        with contextlib.suppress(OSError):  # the gateway gave up on "sleep"
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-mlcloud-version", "v7")
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def same(self, detail: bool = True) -> tuple[int, dict[str, str], Any]:
        """What must match between the protocol and the route: all but the date (and without
        ``detail``, the problem's detail: a timeout's words are the HTTP client's)."""
        drop = {"date"} if detail else {"date", "content-length"}
        headers = {k: v for k, v in self.headers.items() if k not in drop}
        data = self.json()
        return self.status, headers, data if detail else {**data, "detail": None}


class _Replies:
    def __init__(self) -> None:
        self.done: list[Reply] = []
        self.current = Reply()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.status = self.parser.get_status_code()
        self.done.append(self.current)
        self.current = Reply()


def request(body: bytes, path: str = PREDICT, chunked: bool = False, **headers: str) -> bytes:
    """A POST of ``body``; ``headers`` named in Python (``content_type``: content-type)."""
    lines = [f"POST {path} HTTP/1.1", "host: test", "content-type: application/json"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if chunked:  # not sized: uvicorn's ASGI path, then the route
        lines.append("transfer-encoding: chunked")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    else:
        lines.append(f"content-length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def predict_body(*rows: Any) -> bytes:
    return json.dumps({"instances": list(rows)}).encode()


@contextlib.contextmanager
def connection(server: RunningServer | str) -> Iterator[socket.socket]:
    url = server if isinstance(server, str) else server.url
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        yield sock


def read(sock: socket.socket, count: int, replies: _Replies | None = None) -> list[Reply]:
    """``count`` more whole responses from ``sock``."""
    replies = replies or _Replies()
    wanted = len(replies.done) + count
    while len(replies.done) < wanted:
        data = sock.recv(65536)
        assert data, f"closed after {len(replies.done)} responses"
        replies.parser.feed_data(data)
    return replies.done[-count:]


def exchange(server: RunningServer | str, *requests: bytes) -> list[Reply]:
    """``requests`` pipelined on one new connection; their responses."""
    with connection(server) as sock:
        sock.sendall(b"".join(requests))
        return read(sock, len(requests))


def closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def both(
    server: RunningServer, body: bytes, path: str = PREDICT, detail: bool = True, **headers: str
) -> Reply:
    """The answer by the protocol (sized), asserted the same as the route's (chunked)."""
    fast = exchange(server, request(body, path, False, **headers))[0]
    routed = exchange(server, request(body, path, chunked=True, **headers))[0]
    assert fast.same(detail) == routed.same(detail)
    return fast


@pytest.fixture(scope="module")
def front() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFront)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _home(path: Path, front: int) -> Path:
    (path / "api-token").write_text("front-secret")
    store = Store.open(path)
    details = {"front": {"host": "127.0.0.1", "port": front, "pid": 1}, "auth": "token",
               "traffic": {"v7": 100}}  # fmt: skip
    store.put_endpoint(EndpointRecord("fake", "local", "local", EndpointState.READY,
                                      details=details))  # fmt: skip
    store.close()
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, front: int) -> Iterator[RunningServer]:
    home = _home(tmp_path_factory.mktemp("gw-proto"), front)
    srv = start_server(home, "--predict-rate", "100000", env=ENV)
    yield srv
    srv.stop()


def test_pipelined_predictions_answered_in_order_on_one_connection(server: RunningServer) -> None:
    with connection(server) as sock:
        sock.sendall(b"".join(request(predict_body(row)) for row in ("nap", 2, 3)))
        replies = read(sock, 3)
        assert [r.json()["predictions"] for r in replies] == [["nap"], [2], [3]]
        assert all(r.status == 200 and r.headers["x-mlcloud-version"] == "v7" for r in replies)
        assert all("connection" not in r.headers for r in replies)
        sock.sendall(request(predict_body(4)))  # the connection is kept alive
        assert read(sock, 1)[0].json() == {"predictions": [4]}


def test_other_requests_on_the_connection_after_a_prediction(server: RunningServer) -> None:
    replies = exchange(
        server, request(predict_body(1)), HEALTH, request(predict_body(2), chunked=True),
        request(predict_body(3)), HEALTH,
    )  # fmt: skip
    assert [r.status for r in replies] == [200] * 5
    assert [r.json() for r in replies] == [
        {"predictions": [1]}, {"status": "ok"}, {"predictions": [2]}, {"predictions": [3]},
        {"status": "ok"},
    ]  # fmt: skip


def test_connection_close_is_honoured(server: RunningServer) -> None:
    with connection(server) as sock:
        sock.sendall(request(predict_body(1), connection="close"))
        reply = read(sock, 1)[0]
        assert reply.headers["connection"] == "close" and reply.json() == {"predictions": [1]}
        assert closed(sock)
    with connection(server) as sock:  # HTTP/1.0 without keep-alive
        body = predict_body(2)
        sock.sendall(request(body).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        assert read(sock, 1)[0].json() == {"predictions": [2]}
        assert closed(sock)


def test_answers_and_problems_as_the_route_gives_them(server: RunningServer) -> None:
    assert both(server, predict_body(1), accept="application/json").json() == {"predictions": [1]}
    assert both(server, predict_body(1), "/v1/endpoints/fake:predict?provider=local").status == 200
    assert both(server, predict_body("bad")).status == 422  # the model's own refusal
    missing = both(server, predict_body(1), "/v1/endpoints/nope:predict")
    assert missing.status == 404 and missing.headers["content-type"] == "application/problem+json"
    boom = both(server, predict_body("boom"))
    assert (boom.status, boom.json()["upstream_status"]) == (502, 500)
    assert boom.headers["x-mlcloud-version"] == "v7"
    assert both(server, predict_body("sleep"), detail=False).json()["kind"] == "UpstreamTimeout"
    big = both(server, predict_body("x" * 5000))  # over the 4000 limit, under STREAM_MIN
    assert (big.status, big.headers["connection"]) == (413, "close")


def test_metrics_count_protocol_answers(server: RunningServer) -> None:
    def count() -> float:
        text = exchange(server, b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n")[0].body.decode()
        for line in text.splitlines():
            labels = ('code="200"', 'endpoint="fake"', 'version="v7"')
            if line.startswith("mlcloud_predict_requests_total{") and all(
                label in line for label in labels
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    exchange(server, *(request(predict_body(n)) for n in range(5)))
    assert count() == before + 5


def test_access_log_line(server: RunningServer) -> None:
    exchange(server, request(predict_body("logged"), f"{PREDICT}?provider=local"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in server.log_text().splitlines() if x.startswith("{")]
        found = [x for x in lines if x.get("logger") == "mlcloud.server.access"
                 and x.get("path") == PREDICT and x.get("method") == "POST"]  # fmt: skip
        if found:
            assert found[-1]["status"] == 200 and found[-1]["actor"] == "local"
            assert isinstance(found[-1]["ms"], float | int)
            return
        time.sleep(0.1)
    raise AssertionError("no access line for the prediction")


def test_tokens_and_rate_limit(tmp_path_factory: pytest.TempPathFactory, front: int) -> None:
    home = _home(tmp_path_factory.mktemp("gw-proto-auth"), front)
    secret = token(home, "limited", "read")
    # 0.8 per second, a bucket of 1: Retry-After is 1 for the next 1.25 s
    srv = start_server(home, "--predict-rate", "0.8", env=ENV)
    try:
        anonymous = both(srv, predict_body(1))
        assert anonymous.status == 401 and "www-authenticate" in anonymous.headers
        assert both(srv, predict_body(1), authorization="Bearer nope").status == 401
        ok = exchange(srv, request(predict_body(1), authorization=f"Bearer {secret}"))[0]
        assert ok.status == 200
        throttled = both(srv, predict_body(1), authorization=f"Bearer {secret}")
        assert (throttled.status, throttled.headers["retry-after"]) == (429, "1")
        log = [json.loads(x) for x in srv.log_text().splitlines() if x.startswith("{")]
        mine = [(x["status"], x["actor"]) for x in log if x.get("path") == PREDICT]
        assert (200, "limited") in mine and (429, "limited") in mine
    finally:
        srv.stop()


def test_the_server_uses_the_protocol() -> None:
    from mlcloud.server import predict_lean, predict_protocol, run

    assert run._http() is predict_lean.LeanProtocol
    assert issubclass(predict_lean.LeanProtocol, predict_protocol.PredictProtocol)


def test_a_request_in_pieces_and_a_connection_that_starts_elsewhere(server: RunningServer) -> None:
    """Lean connections buffer a head and a body that come in pieces; a connection whose
    first request is not a prediction is uvicorn's throughout (and answers predictions)."""
    with connection(server) as sock:
        whole = request(predict_body("pieces"))
        for i in range(0, len(whole), 7):
            sock.sendall(whole[i : i + 7])
            time.sleep(0.002)
        assert read(sock, 1)[0].json() == {"predictions": ["pieces"]}
        head, _, body = request(predict_body(2)).partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        time.sleep(0.05)
        sock.sendall(body)
        assert read(sock, 1)[0].json() == {"predictions": [2]}
    replies = exchange(server, HEALTH, request(predict_body(3)), request(predict_body(4)))
    assert [r.json() for r in replies] == [{"status": "ok"}, {"predictions": [3]},
                                           {"predictions": [4]}]  # fmt: skip


def test_bare_lf_line_ends_are_uvicorns_to_judge(server: RunningServer) -> None:
    """A head with LF line ends is never framed here (looking for its CRLF CRLF would wait
    for ever, or cut it in a body that holds one): uvicorn's parser judges it, a 400."""
    head = f"POST {PREDICT} HTTP/1.1\nhost: t\ncontent-type: application/json\n"
    for body in (b'{"instances": ["x"]}', b'{"instances": ["x"],\r\n\r\n"pad": 1}'):
        with connection(server) as sock:
            sock.sendall((head + f"content-length: {len(body)}\n\n").encode() + body)
            assert read(sock, 1)[0].status == 400
            assert closed(sock)


def test_a_malformed_head_is_uvicorns_400(server: RunningServer) -> None:
    with connection(server) as sock:
        sock.sendall(request(predict_body(1)))
        assert read(sock, 1)[0].status == 200
        sock.sendall(b"POST /v1/endpoints/fake:predict HTTP/1.1\r\nno colon here\r\n\r\n")
        assert read(sock, 1)[0].status == 400
        assert closed(sock)


def test_shutdown_lets_a_prediction_in_flight_finish(
    tmp_path_factory: pytest.TempPathFactory, front: int
) -> None:
    home = _home(tmp_path_factory.mktemp("gw-proto-stop"), front)
    srv = start_server(home, "--predict-rate", "100000", env=ENV)
    try:
        with connection(srv) as sock:
            sock.sendall(request(predict_body(1)))  # the connection is a lean one
            assert read(sock, 1)[0].status == 200
            sock.sendall(request(predict_body("nap")))  # 0.2 s at the front
            time.sleep(0.05)
            srv.proc.send_signal(signal.SIGTERM)
            reply = read(sock, 1)[0]
            assert reply.status == 200 and reply.json() == {"predictions": ["nap"]}
            assert closed(sock)
        assert srv.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    finally:
        srv.stop()


def test_an_unknown_uvicorn_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from uvicorn.protocols.http import httptools_impl

    from mlcloud.server import predict_protocol

    monkeypatch.delattr(httptools_impl, "HEADER_RE")
    with caplog.at_level("WARNING", "mlcloud.server"):
        assert predict_protocol.http_protocol() == "auto"
    assert "httptools_impl.HEADER_RE" in caplog.text


def test_predictions_take_the_protocol_and_the_rest_do_not(
    tmp_path: Path, front: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (uvicorn in a thread, ``http=PredictProtocol``): which cycle answered."""
    import uvicorn

    from mlcloud.server import predict_lean, predict_protocol
    from mlcloud.server.app import create_app
    from mlcloud.server.settings import Settings

    monkeypatch.setenv("MLCLOUD_HOME", str(_home(tmp_path, front)))
    monkeypatch.delenv("MLCLOUD_API_TOKEN", raising=False)
    answered: list[str] = []
    original = predict_protocol.PredictCycle.run_asgi
    lean_answer = predict_lean.LeanProtocol._answer

    async def counted(self: predict_protocol.PredictCycle, app: Any) -> None:
        answered.append("cycle " + self.scope["path"])
        await original(self, app)

    async def counted_lean(self: predict_lean.LeanProtocol, scope: Any, *args: Any) -> None:
        answered.append("lean " + scope["path"])
        await lean_answer(self, scope, *args)

    monkeypatch.setattr(predict_protocol.PredictCycle, "run_asgi", counted)
    monkeypatch.setattr(predict_lean.LeanProtocol, "_answer", counted_lean)
    config = uvicorn.Config(create_app(Settings(host="127.0.0.1")), host="127.0.0.1", port=0,
                            log_level="warning", http=predict_lean.LeanProtocol)  # fmt: skip
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        sent = [
            request(predict_body(1)),
            request(predict_body(2)),
            request(predict_body(3), chunked=True),
            HEALTH,
            request(predict_body(4)),
        ]
        replies = exchange(f"http://127.0.0.1:{port}", *sent)  # fmt: skip
        assert [r.status for r in replies] == [200] * 5
        # lean until the chunked one; then uvicorn's, its sized predictions on the cycle
        assert answered == [f"lean {PREDICT}", f"lean {PREDICT}", f"cycle {PREDICT}"]
    finally:
        uv.should_exit = True
        thread.join(30)
