"""Self-healing local endpoints, end to end: a real ``bentoml serve`` behind the real front.

Before (issue 16): after ``kill -9`` of the BentoML arbiter its worker kept serving as an orphan
and ``endpoints show`` said FAILED for good; after ``kill -9`` of the front every prediction
failed until a redeploy. Now the front restarts the server (the orphan stopped first), the next
look at the endpoint restarts the front, and both are counted.

The endpoint is bound to 127.0.0.2 (this machine; "exposed", so it needs the token), deployed
with ``MLCLOUD_API_TOKEN`` set in the deployer's environment.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.endpoint_net import TOKEN_ENV
from providers.local.provider import LocalProvider
from tests.conftest import MLCLOUD, cli_env

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]
ROW = [5.1, 3.5, 1.4, 0.2]
TOKEN = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.setenv(TOKEN_ENV, TOKEN)
        mp.setenv("MLCLOUD_DEPLOY_TIMEOUT", "120")
        yield home
        endpoint_procs.stop([], endpoint_procs.home_tag(home))


@pytest.fixture(scope="module")
def provider(home: Path) -> Iterator[LocalProvider]:
    store = Store.open(home)
    yield LocalProvider(Profile("local", "local"), store)
    store.close()


@pytest.fixture(scope="module")
def endpoint(provider: LocalProvider, home: Path) -> Iterator[EndpointRecord]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    model = modeldir.save(LogisticRegression(max_iter=500).fit(x, y), "sklearn", home / "m")
    deployment = Deployment(name="heal", model=str(model), host="127.0.0.2")
    yield provider.deploy(provider.plan_deploy(deployment))
    provider.undeploy("heal")


def _processes(record: EndpointRecord) -> list[psutil.Process]:
    front = psutil.Process(record.details["front"]["pid"])
    found = [front]
    for server in record.details["servers"]:
        arbiter = psutil.Process(server["pid"])
        found += [arbiter, *arbiter.children(recursive=True)]
    return found


def _wait_ready(
    provider: LocalProvider, changed: Callable[[EndpointRecord], bool], timeout: float = 240
) -> float:
    """Seconds until the endpoint serves again with ``changed`` true of its record."""
    started = time.monotonic()
    while True:
        record = provider.endpoint_status("heal")
        if record.state is EndpointState.READY and changed(record):
            try:
                if provider.predict("heal", [ROW]) == {"predictions": [0]}:
                    return time.monotonic() - started
            except Exception:
                pass
        assert time.monotonic() - started < timeout, (record.state, record.message)
        time.sleep(0.5)


def test_no_process_of_the_endpoint_inherits_the_token(endpoint: EndpointRecord) -> None:
    """``MLCLOUD_API_TOKEN`` was inherited by the front, the arbiter and the worker; the front
    gets the token on stdin only."""
    assert endpoint.details["auth"] == "token"
    procs = _processes(endpoint)
    assert len(procs) >= 3  # front, arbiter, worker
    for proc in procs:
        env = proc.environ()
        assert TOKEN_ENV not in env and TOKEN not in json.dumps(env), proc.cmdline()


def test_a_killed_arbiter_is_restarted_by_the_front(
    provider: LocalProvider, endpoint: EndpointRecord, home: Path
) -> None:
    server = provider.endpoint_status("heal").details["servers"][0]
    orphans = endpoint_procs.workers(server)
    assert orphans
    os.kill(server["pid"], signal.SIGKILL)
    took = _wait_ready(provider, lambda r: r.details["servers"][0]["pid"] != server["pid"])
    record = provider.endpoint_status("heal")
    assert record.details["servers"][0]["restarts"] == 1 and record.details["restarts"] == 1
    assert record.message is None
    for pid in orphans:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    print(f"\nkill -9 of the arbiter: serving again after {took:.1f}s, orphan worker stopped")
    out = subprocess.run(
        [*MLCLOUD, "endpoints", "show", "heal"],
        env=cli_env(MLCLOUD_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "restarts:     1" in out.stdout and "READY" in out.stdout, out.stdout


def test_a_killed_front_is_restarted_by_the_next_prediction(
    provider: LocalProvider, endpoint: EndpointRecord
) -> None:
    front = provider.endpoint_status("heal").details["front"]
    os.kill(front["pid"], signal.SIGKILL)
    started = time.monotonic()
    assert provider.predict("heal", [ROW]) == {"predictions": [0]}
    took = time.monotonic() - started
    record = provider.endpoint_status("heal")
    assert record.state is EndpointState.READY
    assert record.details["front"]["pid"] != front["pid"]
    assert record.details["front"]["restarts"] == 1 and record.details["restarts"] == 2
    print(f"\nkill -9 of the front: the next prediction answered after {took:.1f}s")


def test_a_front_restart_needs_the_deploy_token(
    provider: LocalProvider, endpoint: EndpointRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = provider.endpoint_status("heal").details["front"]
    os.kill(front["pid"], signal.SIGKILL)
    time.sleep(0.2)
    monkeypatch.setenv(TOKEN_ENV, secrets.token_urlsafe(32))  # another, equally strong
    record = provider.endpoint_status("heal")
    assert record.state is EndpointState.FAILED
    assert "not the one the endpoint was deployed with" in (record.message or "")
    assert not endpoint_procs.alive(record.details["front"])
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    _wait_ready(provider, lambda r: r.details["front"]["pid"] != front["pid"], timeout=30)
    assert provider.endpoint_status("heal").message is None


def test_front_restarts_back_off(provider: LocalProvider, endpoint: EndpointRecord) -> None:
    record = provider.endpoint_status("heal")
    front = record.details["front"]
    front["failures"], front["restarted_at"] = 3, time.time()  # three in a row, just now
    provider.store.put_endpoint(record)
    os.kill(front["pid"], signal.SIGKILL)
    time.sleep(0.2)
    record = provider.endpoint_status("heal")
    assert record.state is EndpointState.FAILED
    assert "restarting it in" in (record.message or "")  # backoff(3) = 4 s after the last
    assert not endpoint_procs.alive(record.details["front"])
    record.details["front"]["restarted_at"] = time.time() - 5
    provider.store.put_endpoint(record)
    assert provider.endpoint_status("heal").state is EndpointState.READY


def test_undeploy_leaves_nothing(
    provider: LocalProvider, endpoint: EndpointRecord, home: Path
) -> None:
    provider.undeploy("heal")
    assert endpoint_procs.tagged(endpoint_procs.tag(home, "heal", "")) == []
