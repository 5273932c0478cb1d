"""Request capture on a real local endpoint (real ``bentoml serve`` behind the real front).

Two endpoints for the module: ``cap`` captures every request into a small, fast-rotating,
capped directory; ``tight`` has a one-record queue so that a burst overflows it. What is
asserted is what the server wrote (the files), what ``read_window`` returns, the per-version
series on /metrics, and ``mlcloud feedback`` joining labels by the x-request-id of each answer.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.errors import SpecError
from mlcloud.monitor.capture import read_window
from mlcloud.records import EndpointRecord
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.capture import capture_dir
from providers.local.clients import HttpClient
from providers.local.provider import LocalProvider
from tests.conftest import MLCLOUD, cli_env

pytestmark = pytest.mark.timeout(300)

http = HttpClient().request
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.setenv("MLCLOUD_DEPLOY_TIMEOUT", "90")
        yield home
        endpoint_procs.stop([], endpoint_procs.home_tag(home))


@pytest.fixture(scope="module")
def store(home: Path) -> Iterator[Store]:
    store = Store.open(home)
    yield store
    store.close()


@pytest.fixture(scope="module")
def provider(store: Store) -> LocalProvider:
    return LocalProvider(Profile("local", "local"), store)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    root = tmp_path_factory.mktemp("models")
    return modeldir.save(LogisticRegression(max_iter=500).fit(x, y), "sklearn", root / "lr")


def _deploy(provider: LocalProvider, name: str, model: Path, **spec: object) -> EndpointRecord:
    deployment = Deployment.model_validate({"name": name, "model": str(model), **spec})
    return provider.deploy(provider.plan_deploy(deployment))


@pytest.fixture(scope="module")
def cap(provider: LocalProvider, model: Path) -> Iterator[EndpointRecord]:
    env = {"MLCLOUD_CAPTURE_ROTATE_MB": "0.004"}  # ~4 KB files: rotation within the test
    record = _deploy(provider, "cap", model, capture={"sample": 1.0, "max_mb": 1}, env=env)
    yield record
    provider.undeploy("cap")


def _predict(url: str, rows: list[list[float]], rid: str | None = None) -> tuple[int, dict, str]:
    headers = {"x-request-id": rid} if rid else None
    status, raw, head = _post(url + "/predict", {"instances": rows}, headers)
    return status, json.loads(raw), head.get("x-request-id", "")


def _post(url: str, body: object, headers: dict[str, str] | None) -> tuple[int, bytes, dict]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        data = json.dumps(body).encode()
        conn.request(
            "POST", parts.path, data, {"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def _wait_for(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_requests_are_captured_with_ids_and_version(cap: EndpointRecord, store: Store) -> None:
    assert cap.url
    started = time.time()
    status, answer, rid = _predict(cap.url, ROWS, rid="order-42")
    assert status == 200 and rid == "order-42"
    status, _, generated = _predict(cap.url, ROWS[:1])
    assert status == 200 and len(generated) == 32  # a fresh id when the caller sent none

    def two() -> object:
        w = read_window(cap, started - 1, store=store)
        return w if len(set(w.request_ids)) >= 2 else None

    window = _wait_for(two)
    assert window is not None, "the records reached the capture files"
    assert window.features.shape == (3, 4) and window.feature_names == ["0", "1", "2", "3"]
    np.testing.assert_allclose(window.features[:2], ROWS)
    assert list(window.predictions[:2]) == answer["predictions"]
    assert list(window.request_ids) == ["order-42", "order-42", generated]
    assert set(window.versions) == {"v1"}  # the front's x-mlcloud-version of this deploy
    assert window.dropped == 0
    assert all(started - 1 <= t <= time.time() for t in window.timestamps)
    # a window that ends before the requests holds none of them
    assert len(read_window(cap, started - 60, started - 1, store=store)) == 0


def test_rotation_and_the_cap(cap: EndpointRecord, home: Path) -> None:
    assert cap.url
    directory = capture_dir(home, "cap")
    for _ in range(150):  # ~230 bytes a record: ~35 KB, ~8 files of ~4 KB
        assert _predict(cap.url, ROWS)[0] == 200
    files = _wait_for(lambda: len(list(directory.glob("capture-*.jsonl"))) >= 3 and True)
    assert files, "the writer rotated by size"
    sizes = [p.stat().st_size for p in directory.glob("capture-*.jsonl")]
    assert max(sizes) < 8 * 1024
    # the cap: filling 1 MB takes ~4,500 records; enforced at each rotation
    big = [ROWS[0]] * 200  # ~4.5 KB a record
    for _ in range(300):
        assert _predict(cap.url, big)[0] == 200
    time.sleep(0.5)
    total = sum(p.stat().st_size for p in directory.glob("capture-*.jsonl"))
    assert total <= 1024 * 1024 + 16 * 1024, total
    names = sorted(p.name for p in directory.glob("capture-*.jsonl"))
    assert names[0] > "capture-", "the oldest files went first"


def test_a_full_queue_drops_and_counts_never_blocks(
    provider: LocalProvider, model: Path, store: Store
) -> None:
    env = {"MLCLOUD_CAPTURE_QUEUE": "1"}
    record = _deploy(provider, "tight", model, capture={"sample": 1.0}, env=env)
    try:
        assert record.url
        url = record.url
        started = time.time()
        sent = 400
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: _predict(url, ROWS[:1])[0], range(sent)))
        assert results == [200] * sent  # every request answered, none waited for the capture

        def settled() -> object:
            w = read_window(record, started - 1, store=store)
            return w if len(w) + w.dropped == sent else None

        window = _wait_for(settled, 15)
        assert window is not None, "written + dropped == sent"
        assert window.dropped > 0, "a one-record queue under a burst of 8 overflows"
    finally:
        provider.undeploy("tight")


def test_metrics_have_per_version_series(cap: EndpointRecord) -> None:
    assert cap.url
    assert _predict(cap.url, ROWS)[0] == 200
    status, _, _ = _post(cap.url + "/predict", {"nope": 1}, None)
    assert status == 400
    status, raw = http("GET", cap.url + "/metrics", None, timeout=30)
    text = raw.decode()
    assert status == 200
    assert 'mlcloud_model_requests_total{status="2xx",version="v1"}' in text
    assert 'mlcloud_model_requests_total{status="4xx",version="v1"}' in text
    assert 'mlcloud_model_request_duration_seconds_count{version="v1"}' in text
    assert "mlcloud_model_errors_total" in text


def test_feedback_joins_labels_by_request_id(
    cap: EndpointRecord, home: Path, store: Store, tmp_path: Path
) -> None:
    assert cap.url
    started = time.time()
    ids = [_predict(cap.url, [row])[2] for row in ROWS]
    labels = tmp_path / "labels.csv"
    labels.write_text(f"request_id,label\n{ids[0]},0\n{ids[1]},2\nnot-captured,1\n")
    _wait_for(lambda: len(read_window(cap, started, store=store)) >= 2)
    out = subprocess.run(
        [*MLCLOUD, "feedback", "cap", "--labels", str(labels), "-o", "json"],
        env=cli_env(MLCLOUD_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert (result["labels"], result["matched"]) == (3, 2)
    window = read_window(cap, started, store=store)
    assert list(window.labels) == [0, 2]
    assert window.labelled.all()
    # a second batch overrides a label; JSON Lines work too
    fix = tmp_path / "fix.jsonl"
    fix.write_text(json.dumps({"request_id": ids[1], "label": 1}) + "\n")
    out = subprocess.run(
        [*MLCLOUD, "feedback", "cap", "--labels", str(fix)],
        env=cli_env(MLCLOUD_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "1 label(s)" in out.stdout
    assert list(read_window(cap, started, store=store).labels) == [0, 1]


def test_feedback_refuses_a_bad_file(home: Path, tmp_path: Path, cap: EndpointRecord) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,truth\n1,2\n")
    out = subprocess.run(
        [*MLCLOUD, "feedback", "cap", "--labels", str(bad)],
        env=cli_env(MLCLOUD_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "request_id" in out.stderr


def test_an_endpoint_without_capture_says_so(
    provider: LocalProvider, model: Path, store: Store
) -> None:
    record = _deploy(provider, "plain", model)
    try:
        with pytest.raises(SpecError, match="captures no requests"):
            read_window(record, 0, store=store)
    finally:
        provider.undeploy("plain")


def test_deploy_capture_flag_plans_the_capture_env(home: Path, model: Path) -> None:
    out = subprocess.run(
        [*MLCLOUD, "deploy", str(model), "--name", "flagged", "--capture", "0.25",
         "--dry-run", "-o", "json"],
        env=cli_env(MLCLOUD_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    (server,) = [s["request"] for s in plan["steps"] if "bentoml" in s["request"].get("argv", [])]
    env = server["env"]
    assert env["MLCLOUD_CAPTURE_SAMPLE"] == "0.25" and env["MLCLOUD_CAPTURE_MAX_MB"] == "512"
    assert env["MLCLOUD_CAPTURE_DIR"] == str(capture_dir(home, "flagged"))
    assert env["MLCLOUD_SERVE_VERSION"] == "v1"
    bad = subprocess.run(
        [*MLCLOUD, "deploy", str(model), "--name", "flagged", "--capture", "0", "--dry-run"],
        env=cli_env(MLCLOUD_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
