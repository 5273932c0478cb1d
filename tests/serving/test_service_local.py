"""The service run for real with ``bentoml serve`` (local contract), called over HTTP."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.benchmarks.serving_procs import Server
from tests.serving.conftest import IRIS_ROW, LOCAL_MAX_BODY, Farm, iris_model

pytestmark = pytest.mark.slow
MAX_BODY = LOCAL_MAX_BODY


@pytest.fixture(scope="module")
def server(farm: Farm) -> Server:
    return farm.servers["local"]


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url(""), timeout=30) as c:
        yield c


def test_predict(client: httpx.Client) -> None:
    resp = client.post("/predict", json={"instances": [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [0, 2]}


def test_no_native_bentoml_route(client: httpx.Client, server: Server) -> None:
    """BentoML's own ``/v1/predict`` is not served: one predict route, one behaviour. Before,
    it answered a bare list, accepted unknown fields and logged a ~2 KB traceback per bad
    request (2,081,000 bytes of server log per 1,000); now each is a 404 that logs nothing."""
    assert client.post("/v1/predict", json={"instances": [IRIS_ROW]}).status_code == 404
    unknown = client.post("/predict", json={"instances": [IRIS_ROW], "extra": 1})
    assert unknown.status_code == 400 and "extra" in unknown.json()["error"]
    before = server.log.stat().st_size
    for _ in range(200):
        bad = client.post("/v1/predict", json={"instances": [[1.0, 2.0]]})
        assert bad.status_code == 404
    assert server.log.stat().st_size - before < 2000, server.log_tail()


def test_probes_and_docs(client: httpx.Client) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        assert client.get(path).status_code == 200, path
    assert client.get("/docs.json").status_code == 200  # BentoML's OpenAPI (native API)
    spec = client.get("/openapi.json").json()  # the JSON routes
    assert "/predict" in spec["paths"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"instances": [[5.1, 3.5', 400, "not valid JSON"),
        (b'{"instances": [[NaN, 1, 2, 3]]}', 400, "NaN is not valid JSON"),
        (b"[1, 2, 3]", 400, '{\\"instances\\": [...]}'),
        (b'{"inputs": [[1, 2, 3, 4]]}', 400, "instances"),
        (b'{"instances": []}', 400, "non-empty list"),
        (b'{"instances": [[1, 2, 3]]}', 422, "expected [-1, 4]"),
        (b'{"instances": [1, 2, 3, 4]}', 422, "shape [4]"),
        (b'{"instances": [["a", "b", "c", "d"]]}', 400, "got strings"),
        (b'{"instances": [[1, 2], [3]]}', 400, "ragged"),
        (b'{"instances": [[1e400, 1, 1, 1]]}', 400, "out of range"),
    ],
)
def test_bad_payloads_are_4xx_with_a_message(
    client: httpx.Client, body: bytes, status: int, message: str
) -> None:
    resp = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert message in resp.text
    assert "Traceback" not in resp.text


@pytest.mark.parametrize("route", ["/predict", "/v1/predict"])
@pytest.mark.parametrize(
    "media", ["application/vnd.bentoml+pickle", "text/plain", "multipart/form-data", ""]
)
def test_non_json_bodies_are_refused(client: httpx.Client, route: str, media: str) -> None:
    # A pickle body must never reach a deserialiser: this one would run code if unpickled.
    payload = b"cos\nsystem\n(S'echo pwned'\ntR."
    resp = client.post(route, content=payload, headers={"Content-Type": media} if media else {})
    assert resp.status_code == 415, resp.text
    assert "application/json" in resp.json()["error"]


def test_oversized_body_is_413(client: httpx.Client) -> None:
    big = json.dumps({"instances": [IRIS_ROW] * 400}).encode()
    assert len(big) > MAX_BODY
    for route in ("/predict", "/v1/predict"):
        resp = client.post(route, content=big, headers={"Content-Type": "application/json"})
        assert resp.status_code == 413, resp.text
        assert str(MAX_BODY) in resp.json()["error"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    resp = client.post("/predict", content=chunked(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413


def test_concurrent_requests_get_their_own_answers(client: httpx.Client, server: Server) -> None:
    # Many requests at once are stacked into batches; each must get back its own rows.
    rows = [[4.0 + i * 0.1, 3.0, 1.0 + (i % 7) * 0.8, 0.1 + (i % 5) * 0.5] for i in range(48)]
    expected = iris_model().predict(rows).tolist()
    got: dict[int, object] = {}

    def call(i: int) -> None:
        with httpx.Client(base_url=server.url(""), timeout=60) as c:
            got[i] = c.post("/predict", json={"instances": [rows[i]] * (1 + i % 3)}).json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for i, row_pred in enumerate(expected):
        assert got[i] == {"predictions": [row_pred] * (1 + i % 3)}, i


def test_metrics_have_a_bounded_label_set(client: httpx.Client) -> None:
    for i in range(25):
        client.get(f"/no/such/path/{i}")
        client.post(f"/random-{i}", json={})
    client.post("/predict", json={"instances": [IRIS_ROW]})
    text = client.get("/metrics").text
    assert "/no/such/path" not in text and "/random-" not in text
    routes = set(re.findall(r'mlcloud_http_requests_total\{[^}]*route="([^"]+)"', text))
    assert "other" in routes and "/predict" in routes
    assert routes <= {"other", "/predict", "/healthz", "/livez", "/readyz", "/docs.json",
                      "/openapi.json", "/metrics"}  # fmt: skip
    assert 'status="4xx"' in text
    assert "mlcloud_batch_requests" in text
