"""The predict gateway in front of a real local endpoint: the real ``mlcloud server`` process,
the endpoint's real front (bound to 127.0.0.2, so it wants its token: the gateway holds it, the
caller never does) and a real BentoML server running an echo model, so every answer shows what
the far end received.

One server and one endpoint for the module (a BentoML start costs seconds). The gateway runs
with a 2 MB body limit, a 3 s timeout and targets re-read every 0.5 s; the auth test runs last
(once a token exists, every call needs one).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.server.upstreams import VERSION_HEADER, record_version
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.provider import LocalProvider
from tests.conformance.endpoints import TRUSTED
from tests.server.gateway_helpers import predict
from tests.server.serverproc import RunningServer, free_port, start_server, token

pytestmark = pytest.mark.timeout(300)

ECHO = '''import time


class Echo:
    """Answers the rows it received; "boom" fails, "sleep" is slow (on purpose)."""

    def predict(self, rows):
        if rows[0] == "boom":
            raise RuntimeError("boom: a model failure on purpose")
        if rows[0] == "sleep":
            time.sleep(6)
        return rows
'''
MAX_BODY = 2_000_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("gw-local")
    yield home
    endpoint_procs.stop([], endpoint_procs.home_tag(home))  # whatever a failing test left


@pytest.fixture(autouse=True)
def _home_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCLOUD_HOME", str(home))
    monkeypatch.delenv("MLCLOUD_API_TOKEN", raising=False)


@pytest.fixture(scope="module")
def endpoint(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndpointRecord]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.setenv("MLCLOUD_DEPLOY_TIMEOUT", "120")
        src = tmp_path_factory.mktemp("echo-src")
        (src / "echo_predictor.py").write_text(ECHO)
        model = modeldir.save(
            src, "custom", src.parent / "echo-model", predictor="echo_predictor:Echo"
        )
        store = Store.open(home)
        provider = LocalProvider(Profile("local", "local"), store)
        deployment = Deployment(name="echo", model=str(model), host="127.0.0.2", trust=TRUSTED)
        record = provider.deploy(provider.plan_deploy(deployment))
        yield record
        provider.undeploy("echo")
        store.close()


@pytest.fixture(scope="module")
def server(home: Path, endpoint: EndpointRecord) -> Iterator[RunningServer]:
    env = {
        "MLCLOUD_GATEWAY_MAX_BODY": str(MAX_BODY),
        "MLCLOUD_GATEWAY_TIMEOUT_S": "3",
        "MLCLOUD_GATEWAY_TARGET_TTL_S": "0.5",
    }
    srv = start_server(home, env=env)
    yield srv
    srv.stop()


def direct(endpoint: EndpointRecord, home: Path, body: bytes) -> httpx.Response:
    """The same request straight to the endpoint's front, with its token."""
    token = (home / "api-token").read_text().strip()
    return httpx.post(
        f"{endpoint.url}/predict", content=body, timeout=30,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )  # fmt: skip


def metric(server: RunningServer, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when the series does not exist)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_predict_forwarded_and_attributed(
    server: RunningServer, endpoint: EndpointRecord, home: Path
) -> None:
    rows = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
    body = json.dumps({"instances": rows}).encode()
    resp = predict(server.url, "echo", body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": rows}  # the model received exactly these rows
    same = direct(endpoint, home, body)
    assert same.json() == resp.json()
    # the version the front says answered, else the record's one version
    expected = same.headers.get(VERSION_HEADER) or record_version(endpoint)
    assert resp.headers[VERSION_HEADER] == expected
    assert "authorization" not in {k.lower() for k in resp.headers}
    assert metric(server, "mlcloud_predict_requests_total", endpoint="echo", code="200") >= 1


def test_large_bodies_stream_both_ways(server: RunningServer) -> None:
    rows = [[i, i + 0.5, "x" * 16] for i in range(40_000)]  # ~1.3 MB each way
    body = json.dumps({"instances": rows}).encode()
    assert 1 << 20 < len(body) < MAX_BODY
    resp = predict(server.url, "echo", body)
    assert resp.status_code == 200 and resp.json()["predictions"] == rows

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked all the way
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    resp = httpx.post(
        f"{server.url}/v1/endpoints/echo:predict", content=chunks(), timeout=60,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert resp.status_code == 200 and resp.json()["predictions"] == rows
    assert resp.headers[VERSION_HEADER]


def test_body_limit(server: RunningServer) -> None:
    big = json.dumps({"instances": ["y" * 1000] * 3000}).encode()  # 3 MB > 2 MB
    resp = predict(server.url, "echo", big)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["kind"] == "BodyTooLarge"

    def chunks() -> Iterator[bytes]:  # unsized: the limit is counted as it streams
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    resp = httpx.post(
        f"{server.url}/v1/endpoints/echo:predict", content=chunks(), timeout=60,
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert resp.status_code == 413 and resp.json()["kind"] == "BodyTooLarge"


def test_callers_4xx_kept_apart_from_upstream_errors(server: RunningServer) -> None:
    version = predict(server.url, "echo", b'{"instances": [1]}').headers[VERSION_HEADER]
    errors_before = metric(server, "mlcloud_predict_errors_total", endpoint="echo")
    # the caller's bad request: the model's own 4xx, passed on, not the version's error
    resp = predict(server.url, "echo", b'{"rows": [1]}')
    assert resp.status_code == 400, resp.text
    assert "instances" in resp.json()["error"]
    assert resp.headers["content-type"].startswith("application/json")
    assert metric(server, "mlcloud_predict_errors_total", endpoint="echo") == errors_before
    # the model failing: the gateway's 502, attributed to the version, counted as its error
    resp = predict(server.url, "echo", b'{"instances": ["boom"]}')
    assert resp.status_code == 502, resp.text
    problem = resp.json()
    assert problem["kind"] == "UpstreamError" and problem["upstream_status"] == 500
    assert problem["version"] == version == resp.headers[VERSION_HEADER]
    errors = metric(server, "mlcloud_predict_errors_total", endpoint="echo", version=version,
                    kind="UpstreamError")  # fmt: skip
    assert errors == errors_before + 1
    assert metric(server, "mlcloud_predict_requests_total", endpoint="echo", code="400") >= 1


def test_timeout_is_504(server: RunningServer) -> None:
    resp = predict(server.url, "echo", b'{"instances": ["sleep"]}')
    assert resp.status_code == 504, resp.text
    assert resp.json()["kind"] == "UpstreamTimeout"


def test_unknown_unreachable_and_not_ready(server: RunningServer, home: Path) -> None:
    resp = predict(server.url, "nope", b'{"instances": [1]}')
    assert resp.status_code == 404
    assert resp.json()["kind"] == "NotFoundLocally" and resp.json()["hint"]
    store = Store.open(home)
    dead = {"host": "127.0.0.1", "port": free_port(), "pid": 2**22 + 1}  # nothing listens
    store.put_endpoint(
        EndpointRecord("ghost", "local", "local", EndpointState.READY, details={"front": dead})
    )
    store.put_endpoint(EndpointRecord("early", "local", "local", EndpointState.CREATING))
    store.close()
    resp = predict(server.url, "ghost", b'{"instances": [1]}')
    assert resp.status_code == 502 and resp.json()["kind"] == "UpstreamUnreachable"
    resp = predict(server.url, "early", b'{"instances": [1]}')
    assert resp.status_code == 503 and resp.json()["kind"] == "NotServing"
    assert resp.headers["retry-after"]
    # forgotten by the store: once its cached target is older than the TTL, a 404
    store = Store.open(home)
    store.delete_endpoint("ghost", "local")
    store.close()
    statuses = []
    for _ in range(40):
        statuses.append(predict(server.url, "ghost", b'{"instances": [1]}').status_code)
        if statuses[-1] == 404:
            break
        time.sleep(0.1)
    assert statuses[-1] == 404 and set(statuses) <= {502, 404}, statuses


def test_a_killed_front_stops_no_prediction_and_is_healed(
    server: RunningServer, endpoint: EndpointRecord, home: Path
) -> None:
    """The gateway reaches the servers without the front (``direct_route``): a dead front costs
    its predictions nothing, and the gateway's next look at the endpoint restarts it."""
    store = Store.open(home)
    pid = int(store.get_endpoint("echo").details["front"]["pid"])
    store.close()
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    resp = predict(server.url, "echo", b'{"instances": [[7]]}')
    assert resp.status_code == 200 and resp.json() == {"predictions": [[7]]}, resp.text
    answered = time.monotonic() - started
    healed_pid = pid
    while healed_pid == pid and time.monotonic() - started < 30:
        assert predict(server.url, "echo", b'{"instances": [[8]]}').status_code == 200
        time.sleep(0.2)  # targets are looked at again every 0.5 s here
        store = Store.open(home)
        healed_pid = int(store.get_endpoint("echo").details["front"]["pid"])
        store.close()
    assert healed_pid != pid, "the gateway's refresh restarts a dead front"
    assert direct(endpoint, home, b'{"instances": [[9]]}').json() == {"predictions": [[9]]}
    print(
        f"\nkill -9 of the front: answered through the gateway in {answered * 1e3:.0f} ms; "
        f"front restarted {time.monotonic() - started:.1f}s after the kill"
    )


def test_predict_needs_a_read_token(server: RunningServer, home: Path) -> None:
    reader = token(home, "reader", "read")
    body = b'{"instances": [[1, 2]]}'
    refused = False
    for _ in range(50):  # the server re-reads its token list within token_cache_s (1 s)
        resp = predict(server.url, "echo", body)
        if resp.status_code == 401:
            refused = True
            break
        time.sleep(0.1)
    assert refused, "predict without a token is refused once tokens exist"
    resp = predict(server.url, "echo", body, token=reader)
    assert resp.status_code == 200 and resp.json() == {"predictions": [[1, 2]]}
    assert re.fullmatch(r".+", resp.headers[VERSION_HEADER])
