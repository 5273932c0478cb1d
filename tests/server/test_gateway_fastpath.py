"""The predict fast path (``mlcloud.server.fastpath``) keeps everything the route does.

A small body with a Content-Length takes the fast path; the same body sent chunked (no length)
takes the FastAPI route: every answer is compared both ways. The far end is a real HTTP/1.1
server on loopback standing in for a local endpoint's front (the record points at it), so each
test asserts what it received: the bytes as sent, the front's bearer token (never the
caller's), the caller's content headers. One gateway for the module (uvicorn in a thread); the
auth test runs last (once a token exists, every call needs one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.server.gateway import STREAM_MIN, GatewayConfig
from mlcloud.store import Store
from mlcloud.store import auth as token_store
from tests.server.gateway_helpers import app_server, predict
from tests.server.serverproc import token
from tests.server.standin import request_body

pytestmark = pytest.mark.timeout(120)
FRONT_TOKEN = "front-secret"
MAX_BODY = 4000  # below STREAM_MIN: the fast path enforces it itself
VERSION = "x-mlcloud-version"


class FakeFront(BaseHTTPRequestHandler):
    """Answers by the first instance: "boom" 500, "busy" 503, "refuse" 401, "bad" 422, "sleep"
    too slow, anything else echoed as the version "v7" with headers to pass on or drop."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the front
    received: list[dict[str, Any]] = []
    lock, busy, most = threading.Lock(), 0, 0

    def do_POST(self) -> None:
        body = request_body(self)
        FakeFront.received.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
        )
        rows = json.loads(body).get("instances") or [None]
        status, answer = {
            "boom": (500, b"boom: a model failure"),
            "busy": (503, b"overloaded"),
            "refuse": (401, b"who are you"),
            "bad": (422, b'{"error": "bad rows"}'),
        }.get(str(rows[0]), (200, json.dumps({"predictions": rows}).encode()))
        if rows[0] == "sleep":
            time.sleep(1.5)
        if rows[0] == "nap":  # counted: how many the gateway has in flight at once
            with FakeFront.lock:
                FakeFront.busy += 1
                FakeFront.most = max(FakeFront.most, FakeFront.busy)
            time.sleep(0.2)
            with FakeFront.lock:
                FakeFront.busy -= 1
        with contextlib.suppress(OSError):  # the gateway gave up on "sleep"
            self._answer(status, answer)

    def _answer(self, status: int, answer: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.send_header(VERSION, "v7")
        self.send_header("x-extra", "kept")
        self.send_header("keep-alive", "timeout=5")  # hop-by-hop: never passed on
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def front() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeFront)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, front: int) -> Path:
    home = tmp_path_factory.mktemp("gw-fast")
    (home / "api-token").write_text(FRONT_TOKEN)
    store = Store.open(home)
    front_at = {"host": "127.0.0.1", "port": front, "pid": 1}
    details = {"front": front_at, "auth": "token", "traffic": {"v7": 100}}  # v7 when silent
    store.put_endpoint(EndpointRecord("fake", "local", "local", EndpointState.READY,
                                      details=details))  # fmt: skip
    store.close()
    return home


@pytest.fixture(autouse=True)
def _home_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCLOUD_HOME", str(home))  # where the server thread looks endpoints up
    monkeypatch.delenv("MLCLOUD_API_TOKEN", raising=False)


@pytest.fixture(scope="module")
def gateway(home: Path) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.delenv("MLCLOUD_API_TOKEN", raising=False)
        config = GatewayConfig(max_body=MAX_BODY, timeout_s=0.5)
        with app_server(config, predict_rate=1000.0) as url:
            yield url


def both(url: str, body: bytes, query: str = "", **headers: str) -> list[httpx.Response]:
    """The same request by the fast path (sized) and by the route (chunked)."""

    def chunks() -> Iterator[bytes]:
        yield body[:5]
        yield body[5:]

    sent = {"content-type": "application/json", **headers}
    where = f"{url}/v1/endpoints/fake:predict{query}"
    sized = httpx.post(where, content=body, headers=sent, timeout=30)
    return [sized, httpx.post(where, content=chunks(), headers=sent, timeout=30)]


def same(answers: list[httpx.Response]) -> httpx.Response:
    fast, route = answers
    assert fast.status_code == route.status_code, (fast.text, route.text)
    assert fast.headers.get(VERSION) == route.headers.get(VERSION)
    assert fast.headers["content-type"] == route.headers["content-type"]
    assert fast.headers.get("x-extra") == route.headers.get("x-extra")
    fast_doc, route_doc = fast.json(), route.json()
    if isinstance(fast_doc, dict) and fast_doc.get("kind") == "UpstreamTimeout":
        del fast_doc["detail"], route_doc["detail"]  # each HTTP client words its timeout
    assert fast_doc == route_doc
    return fast


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_forwarded_as_sent_and_attributed(gateway: str) -> None:
    before = metric(gateway, "mlcloud_predict_requests_total", version="v7", code="200")
    body = b'{"instances": [[5.1, 3.5], [6.2, 2.9]]}'
    FakeFront.received.clear()
    resp = same(both(gateway, body, accept="application/json"))
    assert resp.json() == {"predictions": [[5.1, 3.5], [6.2, 2.9]]}
    assert resp.headers[VERSION] == "v7" and resp.headers["x-extra"] == "kept"
    assert "keep-alive" not in resp.headers
    assert len(FakeFront.received) == 2
    for got in FakeFront.received:  # what the far end received, both ways
        assert got["path"] == "/predict" and got["body"] == body
        assert got["headers"]["authorization"] == f"Bearer {FRONT_TOKEN}"  # the front's
        assert got["headers"]["content-type"] == got["headers"]["accept"] == "application/json"
    after = metric(gateway, "mlcloud_predict_requests_total", version="v7", code="200")
    assert after == before + 2
    # the provider named in the query: found, or refused the same way both ways
    assert same(both(gateway, body, "?provider=local")).status_code == 200
    assert same(both(gateway, body, "?provider=nope")).status_code >= 400


def test_problems_and_error_series(gateway: str) -> None:
    expected = {
        "boom": (502, "UpstreamError", 500),
        "busy": (503, "UpstreamUnavailable", 503),
        "refuse": (502, "UpstreamRefused", 401),
        "sleep": (504, "UpstreamTimeout", None),
    }
    for row, (status, kind, upstream) in expected.items():
        errors = metric(gateway, "mlcloud_predict_errors_total", version="v7", kind=kind)
        resp = same(both(gateway, json.dumps({"instances": [row]}).encode()))
        assert resp.status_code == status
        assert resp.headers["content-type"] == "application/problem+json"
        problem = resp.json()
        assert problem["kind"] == kind and problem.get("upstream_status") == upstream
        assert resp.headers[VERSION] == "v7" and problem["version"] == "v7"
        after = metric(gateway, "mlcloud_predict_errors_total", version="v7", kind=kind)
        assert after == errors + 2, kind  # counted against the version, both ways
    # the caller's bad request: the model's own answer, passed on; not the version's error
    before = metric(gateway, "mlcloud_predict_errors_total", version="v7")
    resp = same(both(gateway, b'{"instances": ["bad"]}'))
    assert resp.status_code == 422 and resp.json() == {"error": "bad rows"}
    assert metric(gateway, "mlcloud_predict_errors_total", version="v7") == before
    assert metric(gateway, "mlcloud_predict_requests_total", version="v7", code="422") >= 2


def test_body_limit_and_unknown_endpoint(gateway: str) -> None:
    FakeFront.received.clear()
    big = json.dumps({"instances": ["x" * MAX_BODY]}).encode()
    assert MAX_BODY < len(big) <= STREAM_MIN  # the fast path's own check, not the route's
    resp = same(both(gateway, big))
    assert resp.status_code == 413 and resp.json()["kind"] == "BodyTooLarge"
    assert resp.headers["content-type"] == "application/problem+json"
    assert FakeFront.received == []  # never forwarded
    resp = predict(gateway, "nope", b'{"instances": [1]}')
    assert resp.status_code == 404 and resp.json()["kind"] == "NotFoundLocally"
    assert resp.json()["instance"] == "/v1/endpoints/nope:predict"


def test_connections_to_the_front_are_bounded(gateway: str) -> None:
    import concurrent.futures

    config = GatewayConfig(max_connections=2, timeout_s=10)
    with app_server(config) as url, concurrent.futures.ThreadPoolExecutor(6) as pool:
        calls = [pool.submit(predict, url, "fake", b'{"instances": ["nap"]}') for _ in range(6)]
        assert [c.result().status_code for c in calls] == [200] * 6  # queued, not refused
    assert FakeFront.most == 2


def test_tokens_rate_limit_and_access_log(
    gateway: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reader = token(home, "reader", "read")
    body = b'{"instances": [[1]]}'
    for _ in range(50):  # the server re-reads its token list within token_cache_s (1 s)
        refused = both(gateway, body)
        if refused[0].status_code == 401:
            break
        time.sleep(0.1)
    for resp in refused:
        assert resp.status_code == 401 and resp.json()["kind"] == "AuthError"
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.headers["www-authenticate"].startswith("Bearer")
    bad = both(gateway, body, authorization="Bearer not-a-token")
    assert [r.status_code for r in bad] == [401, 401]
    with caplog.at_level(logging.INFO, logger="mlcloud.server.access"):
        resp = same(both(gateway, body, authorization=f"Bearer {reader}"))
    assert resp.status_code == 200 and resp.headers[VERSION] == "v7"
    logged = [r for r in caplog.records if getattr(r, "path", "").endswith(":predict")]
    assert [getattr(r, "actor", None) for r in logged] == ["reader", "reader"]
    assert not [e for e in token_store.list_audit(Store.open(home), 100)
                if "predict" in str(e)]  # fmt: skip  # a prediction changes nothing
    with app_server(predict_rate=0.001, predict_burst=2) as slow:  # 2, then 429
        answers = [predict(slow, "fake", body, token=reader) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["kind"] == "Throttled"
        assert answers[2].headers["retry-after"]


def test_the_fast_path_sits_inside_the_access_log() -> None:
    from mlcloud.server.app import create_app
    from mlcloud.server.fastpath import PredictFastPath
    from mlcloud.server.observe import ObserveMiddleware
    from mlcloud.server.settings import Settings

    layers: list[Any] = [m.cls for m in create_app(Settings()).user_middleware]  # outermost 1st
    assert layers.index(ObserveMiddleware) < layers.index(PredictFastPath)
