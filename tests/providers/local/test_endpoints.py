"""Local endpoints end to end: real ``bentoml serve`` servers behind the real front process.

One endpoint is deployed for the whole module (each BentoML start costs seconds on a small box)
and walked through its life: deploy, predict, update under load, failed update, a dead server,
undeploy. It is bound to 127.0.0.2 (still this machine; never another address), which is not
the default 127.0.0.1, so it is "exposed" and every request needs the generated token. The
default loopback bind is checked by the conformance module's deploys.
"""

from __future__ import annotations

import json
import secrets
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from mlcloud import modeldir
from mlcloud.config import Profile
from mlcloud.errors import (
    AuthError,
    ConfigError,
    Conflict,
    ProviderError,
    SpecError,
    Transient,
    UnsupportedFeature,
)
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.specs import Deployment, ReplicaRange
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.clients import HttpClient
from providers.local.endpoint_net import TokenError, free_port, token_bits
from providers.local.front import write_upstreams
from providers.local.provider import LocalProvider
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.conftest import MLCLOUD, cli_env

pytestmark = pytest.mark.timeout(300)

http = HttpClient().request

ROW = [5.1, 3.5, 1.4, 0.2]  # iris setosa: class 0
BODY = json.dumps({"instances": [ROW]}).encode()
BROKEN = """class Predictor:
    def __init__(self):
        raise RuntimeError("boom: this model refuses to load")

    def predict(self, inputs):
        return inputs
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.delenv("MLCLOUD_API_TOKEN", raising=False)
        mp.setenv("MLCLOUD_DEPLOY_TIMEOUT", "90")
        yield home
        # Whatever a failing test left behind: every process tagged with this home.
        endpoint_procs.stop([], endpoint_procs.home_tag(home))


@pytest.fixture(scope="module")
def provider(home: Path) -> Iterator[LocalProvider]:
    store = Store.open(home)
    yield LocalProvider(Profile("local", "local"), store)
    store.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("models")
    x, y = load_iris(return_X_y=True)
    lr = LogisticRegression(max_iter=500).fit(x, y)
    dummy = DummyClassifier(strategy="constant", constant=2).fit(x, y)
    src = root / "broken-src"
    src.mkdir()
    (src / "broken_predictor.py").write_text(BROKEN)
    return {
        "lr": modeldir.save(lr, "sklearn", root / "lr"),
        "dummy": modeldir.save(dummy, "sklearn", root / "dummy"),
        "broken": modeldir.save(
            src, "custom", root / "broken", predictor="broken_predictor:Predictor"
        ),
    }


@pytest.fixture(scope="module")
def endpoint(provider: LocalProvider, models: dict[str, Path]) -> Iterator[EndpointRecord]:
    deployment = Deployment(name="iris", model=str(models["lr"]), host="127.0.0.2")
    record = provider.deploy(provider.plan_deploy(deployment))
    yield record
    provider.undeploy("iris")


@pytest.fixture(scope="module")
def token(endpoint: EndpointRecord, home: Path) -> str:
    return (home / "api-token").read_text().strip()


def _predict_http(url: str | None, token: str | None) -> tuple[int, Any]:
    assert url, "the endpoint has a URL"
    status, raw = http("POST", url + "/predict", BODY, token=token, timeout=30)
    return status, json.loads(raw)


def _listen_addresses(pid: int) -> set[str]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found = set()
    for proc in procs:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add(conn.laddr.ip)
    return found


# ---- plan -----------------------------------------------------------------------------------
def test_plan_is_exact_and_never_holds_the_token(
    provider: LocalProvider, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cret-token-value-" + secrets.token_urlsafe(24)
    monkeypatch.setenv("MLCLOUD_API_TOKEN", secret)
    plan = provider.plan_deploy(
        Deployment(name="planned", model=str(models["lr"]), host="127.0.0.2", replicas=2)
    )
    text = plan.to_json()
    assert secret not in text
    calls = [s.call for s in plan.steps]
    assert calls == ["local.Popen", "local.Popen", "local.Popen", "local.SwitchUpstreams"]
    for server in plan.steps[:2]:
        argv = list(server.request["argv"])
        assert argv[argv.index("--host") + 1] == "127.0.0.1"  # backends never leave loopback
        assert server.request["env"]["MLCLOUD_SERVE_MODEL"] == str(models["lr"])
        assert server.request["env"]["BENTOML_DO_NOT_TRACK"] == "True"
    front = list(plan.steps[2].request["argv"])
    assert front[front.index("--host") + 1] == "127.0.0.2" and "--token-stdin" in front
    assert provider.list_endpoints() == []


def test_plan_refuses_what_local_cannot_do(
    provider: LocalProvider, models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedFeature, match="autoscaling"):
        provider.plan_deploy(
            Deployment(name="a", model=str(models["lr"]), replicas=ReplicaRange(min=1, max=3))
        )
    with pytest.raises(UnsupportedFeature, match="s3://"):
        provider.plan_deploy(Deployment(name="a", model="s3://bucket/model"))
    with pytest.raises(SpecError, match="not an mlcloud model directory"):
        provider.plan_deploy(Deployment(name="a", model=str(tmp_path)))


# ---- deploy / predict -----------------------------------------------------------------------
def test_deploy_serves_over_http_and_sdk(
    provider: LocalProvider,
    endpoint: EndpointRecord,
    token: str,
    models: dict[str, Path],
    home: Path,
) -> None:
    assert endpoint.state is EndpointState.READY and endpoint.url
    assert endpoint.url.startswith("http://127.0.0.2:")
    assert endpoint.model_sha256 == modeldir.digest(models["lr"])
    stored = provider.store.get_endpoint("iris")
    assert stored.details["front"]["pid"] == endpoint.details["front"]["pid"]
    assert _predict_http(endpoint.url, token) == (200, {"predictions": [0]})
    # The SDK path finds the token in $MLCLOUD_HOME/api-token by itself.
    assert provider.predict("iris", {"instances": [ROW, ROW]}) == {"predictions": [0, 0]}
    assert provider.predict("iris", [ROW]) == {"predictions": [0]}  # bare rows are wrapped
    # The front owns the stable address; the servers bind 127.0.0.1 only.
    assert _listen_addresses(endpoint.details["front"]["pid"]) == {"127.0.0.2"}
    for server in endpoint.details["servers"]:
        assert _listen_addresses(server["pid"]) == {"127.0.0.1"}
        log = Path(server["log"])
        assert log.is_file() and log.parent == home / "endpoints" / "iris"


def test_exposed_endpoint_requires_the_token(
    provider: LocalProvider, endpoint: EndpointRecord, token: str, home: Path
) -> None:
    assert endpoint.url and endpoint.details["auth"] == "token"
    assert stat.S_IMODE((home / "api-token").stat().st_mode) == 0o600
    for bad in (None, "wrong-token", token + "x", token[:-1]):
        status, answer = _predict_http(endpoint.url, bad)
        assert status == 401 and "token" in answer["error"]
    status, _ = http("GET", endpoint.url + "/readyz")
    assert status == 401, "every path needs the token, health included"
    assert http("GET", endpoint.url + "/readyz", token=token)[0] == 200
    # The token is nowhere but the 0600 file: not in the store, argv or environment.
    assert token.encode() not in (home / "state.db").read_bytes()
    front = psutil.Process(endpoint.details["front"]["pid"])
    assert token not in " ".join(front.cmdline()) and token not in json.dumps(front.environ())


def test_token_from_the_environment_wins(
    provider: LocalProvider, endpoint: EndpointRecord, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLCLOUD_API_TOKEN", "not-the-endpoint-token")
    with pytest.raises(AuthError, match="401"):
        provider.predict("iris", [ROW])


def test_bad_payload_is_a_clear_client_error(
    provider: LocalProvider, endpoint: EndpointRecord
) -> None:
    with pytest.raises(ProviderError) as err:
        provider.predict("iris", {"instances": [[1.0, 2.0]]})  # wrong row width
    assert err.value.code in ("400", "422") and not isinstance(err.value, Transient)
    assert f"endpoint 'iris' answered {err.value.code}" in str(err.value)


def test_bentomls_own_route_is_not_served_through_the_front(
    endpoint: EndpointRecord, token: str
) -> None:
    """Before: BentoML's ``/v1/predict`` answered through the front, accepted unknown fields and
    wrote ~2 KB of traceback per bad request: 2,081,000 bytes of server log per 1,000. Now a
    404, the same for every request, and nothing in the log."""
    assert endpoint.url
    log = Path(endpoint.details["servers"][0]["log"])
    before = log.stat().st_size
    bad = json.dumps({"instances": [[1.0, 2.0]], "unknown": 1}).encode()
    codes = {http("POST", endpoint.url + "/v1/predict", bad, token=token)[0] for _ in range(1000)}
    grown = log.stat().st_size - before
    print(f"\n1,000 bad requests to /v1/predict: {codes}, server log +{grown} bytes")
    assert codes == {404} and grown < 1000
    assert http("POST", endpoint.url + "/v1/predict", BODY, token=token)[0] == 404


def test_update_plan_keeps_the_front(
    provider: LocalProvider, endpoint: EndpointRecord, models: dict[str, Path]
) -> None:
    plan = provider.plan_deploy(Deployment(name="iris", model=str(models["dummy"])))
    calls = [s.call for s in plan.steps]
    assert calls == ["local.Popen", "local.SwitchUpstreams", "local.DrainAndStop"]
    assert plan.steps[1].request["generation"] == 2
    with pytest.raises(Conflict, match="cannot move"):
        provider.plan_deploy(Deployment(name="iris", model=str(models["dummy"]), port=free_port()))


# ---- zero-downtime update -------------------------------------------------------------------
def test_update_under_load_fails_no_request(
    provider: LocalProvider, endpoint: EndpointRecord, token: str, models: dict[str, Path]
) -> None:
    stop = threading.Event()
    results: list[tuple[int, Any]] = []
    errors: list[str] = []

    def load() -> None:
        deadline = time.monotonic() + 60
        for _ in range(20000):  # bounded in count and time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                results.append(_predict_http(endpoint.url, token))
            except OSError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        updated = provider.deploy(
            provider.plan_deploy(Deployment(name="iris", model=str(models["dummy"])))
        )
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    failed = [r for r in results if r[0] != 200]
    assert not errors and not failed, (errors[:3], failed[:3])
    answers = [r[1]["predictions"][0] for r in results]
    assert answers[0] == 0 and answers[-1] == 2, "the load saw both the old and the new model"
    assert len(results) > 20
    assert updated.url == endpoint.url and updated.details["generation"] == 2
    assert updated.details["front"]["pid"] == endpoint.details["front"]["pid"]
    assert updated.model_sha256 == modeldir.digest(models["dummy"])
    for old in endpoint.details["servers"]:
        assert not endpoint_procs.alive(old), "the old server was stopped after draining"
    print(f"\nupdate under load: {len(results)} requests, 0 failed")


def test_failed_update_keeps_the_old_model_serving(
    provider: LocalProvider,
    endpoint: EndpointRecord,
    token: str,
    models: dict[str, Path],
    home: Path,
) -> None:
    with pytest.raises(ProviderError) as err:
        broken = Deployment(name="iris", model=str(models["broken"]), trust=TRUSTED)
        provider.deploy(provider.plan_deploy(broken))
    assert "boom: this model refuses to load" in str(err.value), "the message carries the log tail"
    record = provider.endpoint_status("iris")
    assert record.state is EndpointState.READY and record.details["generation"] == 2
    assert record.model_sha256 == modeldir.digest(models["dummy"])
    assert "failed" in (record.message or "")
    assert _predict_http(endpoint.url, token) == (200, {"predictions": [2]})
    assert endpoint_procs.tagged(endpoint_procs.tag(home, "iris", "server-g3-")) == []


def test_front_retries_past_a_dead_backend(
    provider: LocalProvider, endpoint: EndpointRecord, tmp_path: Path
) -> None:
    """A second front whose first upstream refuses connections still answers every request."""
    live = f"http://127.0.0.1:{provider.endpoint_status('iris').details['servers'][0]['port']}"
    dead = f"http://127.0.0.1:{free_port()}"
    write_upstreams(tmp_path, 1, [dead, live])
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "providers.local.front",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path),
    ]
    ident = endpoint_procs.spawn(argv, {}, str(tmp_path), tmp_path / "front.log")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http("GET", f"http://127.0.0.1:{port}/-/mlcloud/front")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline, endpoint_procs.log_tail(tmp_path / "front.log")
                time.sleep(0.1)
        answers = [_predict_http(f"http://127.0.0.1:{port}", None) for _ in range(10)]
        assert answers == [(200, {"predictions": [2]})] * 10
    finally:
        endpoint_procs.stop([ident], None)


def test_status_notices_a_dead_server(provider: LocalProvider, endpoint: EndpointRecord) -> None:
    """Its only server stopped, the endpoint says it is restarting it and callers get a 5xx to
    retry (the front restarts it: test_heal_endpoints follows that to the end); undeploy, next,
    stops whatever the restart has started by then."""
    server = provider.endpoint_status("iris").details["servers"][0]
    endpoint_procs.stop([server], None, grace=5)
    record = provider.endpoint_status("iris")
    assert record.state is EndpointState.FAILED
    assert f"server on port {server['port']} restarting" in (record.message or "")
    with pytest.raises(Transient, match=r"answered 50[23]"):
        provider.predict("iris", [ROW])


def test_undeploy_is_complete_and_idempotent(
    provider: LocalProvider, endpoint: EndpointRecord, home: Path
) -> None:
    record = provider.store.get_endpoint("iris")
    pids = [record.details["front"]["pid"]] + [s["pid"] for s in record.details["servers"]]
    gone = provider.undeploy("iris")
    assert gone is not None and gone.state is EndpointState.DELETED
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert endpoint_procs.tagged(endpoint_procs.tag(home, "iris", "")) == []
    assert provider.undeploy("iris") is None
    assert provider.list_endpoints() == []


# ---- no processes needed --------------------------------------------------------------------
def test_interrupted_deploy_shows_as_failed(provider: LocalProvider) -> None:
    """A CREATING record whose deploy lock nobody holds is a deploy that died half-way."""
    provider.store.put_endpoint(
        EndpointRecord(name="half", provider="local", type="local", state=EndpointState.CREATING)
    )
    record = provider.endpoint_status("half")
    assert record.state is EndpointState.FAILED and "interrupted" in (record.message or "")
    assert provider.undeploy("half") is not None
    assert provider.undeploy("half") is None


def test_weak_token_is_refused_beyond_loopback(
    provider: LocalProvider, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1-character token was accepted for a 0.0.0.0 endpoint; now anything under 128 bits
    is refused at plan time (nothing starts, nothing binds), with how to make a good one."""
    for weak in ("x", "password1234", "ab" * 40, "0123456789" * 3):
        monkeypatch.setenv("MLCLOUD_API_TOKEN", weak)
        with pytest.raises(TokenError, match="too weak") as err:
            provider.plan_deploy(Deployment(name="w", model=str(models["lr"]), host="0.0.0.0"))
        assert isinstance(err.value, ConfigError) and "secrets.token_urlsafe" in str(err.value.hint)
    monkeypatch.setenv("MLCLOUD_API_TOKEN", "has a space " + secrets.token_urlsafe(32))
    with pytest.raises(TokenError, match="without spaces"):
        provider.plan_deploy(Deployment(name="w", model=str(models["lr"]), host="127.0.0.2"))
    monkeypatch.setenv("MLCLOUD_API_TOKEN", "x")  # loopback needs no token: any is fine
    assert provider.plan_deploy(Deployment(name="w", model=str(models["lr"])))
    for strong in (secrets.token_urlsafe(16), secrets.token_hex(16), secrets.token_urlsafe(32)):
        assert token_bits(strong) >= 128
        monkeypatch.setenv("MLCLOUD_API_TOKEN", strong)
        assert provider.plan_deploy(Deployment(name="w", model=str(models["lr"]), host="0.0.0.0"))


def test_every_random_token_the_hint_suggests_is_strong_enough() -> None:
    """``secrets.token_urlsafe(16)`` without a digit (2 % of them) was rated 126.6 bits, under
    the 128 required: a token made as the hint says was refused now and then (a flaky test)."""
    for _ in range(5000):
        assert token_bits(secrets.token_urlsafe(16)) >= 128
        assert token_bits(secrets.token_hex(16)) >= 128
    assert token_bits("ABCDEFGHIJKLMNOPQRSTUV") < 128  # no digit, no lowercase: 26 letters


def test_an_empty_token_file_says_what_to_do(
    own_home: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty ``$MLCLOUD_HOME/api-token`` made the front exit with "no token arrived on
    stdin"; now the plan refuses it, naming the file and the two ways out."""
    own_home.mkdir(parents=True)
    (own_home / "api-token").write_text("\n")
    store = Store.open(own_home)
    try:
        provider = LocalProvider(Profile("local", "local"), store)
        deployment = Deployment(name="e", model=str(models["lr"]), host="127.0.0.2")
        with pytest.raises(TokenError, match="api-token is empty") as err:
            provider.plan_deploy(deployment)
        assert "delete it" in str(err.value.hint)
        out = subprocess.run(
            [*MLCLOUD, "deploy", str(models["lr"]), "--name", "e", "--host", "127.0.0.2"],
            env=cli_env(MLCLOUD_HOME=str(own_home)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0 and "api-token is empty" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and provider.list_endpoints() == []
    finally:
        store.close()


def test_front_follows_the_atomically_replaced_file(tmp_path: Path) -> None:
    from providers.local.front import UPSTREAMS_FILE, Upstreams

    upstreams = Upstreams(tmp_path / UPSTREAMS_FILE)
    assert upstreams.pick() is None  # no file yet: nothing to route to
    write_upstreams(tmp_path, 1, ["http://127.0.0.1:1", "http://127.0.0.1:2"])
    assert {upstreams.pick(), upstreams.pick()} == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
    write_upstreams(tmp_path, 2, [])  # an empty list never replaces a working one
    assert upstreams.pick() in {"http://127.0.0.1:1", "http://127.0.0.1:2"}
    write_upstreams(tmp_path, 3, ["http://127.0.0.1:3"])
    assert upstreams.pick() == "http://127.0.0.1:3" and upstreams.generation == 3


# ---- a user's project with its own `serving` / `providers` packages -------------------------
SHADOW = "raise ImportError(\"the user's own {0} package was imported instead of mlcloud's\")\n"


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    """A project dir whose packages share the names of mlcloud's own top-level packages."""
    project = tmp_path / "project"
    for package in ("serving", "providers"):
        (project / package).mkdir(parents=True)
        (project / package / "__init__.py").write_text(SHADOW.format(package))
    return project


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("MLCLOUD_HOME", str(home))
    monkeypatch.delenv("MLCLOUD_API_TOKEN", raising=False)
    monkeypatch.setenv("MLCLOUD_DEPLOY_TIMEOUT", "90")
    yield home
    endpoint_procs.stop([], endpoint_procs.home_tag(home))


def test_deploy_from_a_project_with_its_own_serving_and_providers(
    user_project: Path, own_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``bentoml serve`` puts its working directory first on ``sys.path``: started from the
    caller's project it would import the project's ``serving``, not mlcloud's, and never load."""
    model = make_custom_model(tmp_path / "models", "a")
    monkeypatch.chdir(user_project)
    store = Store.open(own_home)
    provider = LocalProvider(Profile("local", "local"), store)
    try:
        deployment = Deployment(name="mine", model=str(model), trust=TRUSTED)
        record = provider.deploy(provider.plan_deploy(deployment))
        assert record.state is EndpointState.READY
        assert provider.predict("mine", {"instances": [[1.0]]}) == {"predictions": ["a"]}
        for ident in (*record.details["servers"], record.details["front"]):
            assert psutil.Process(ident["pid"]).cwd() == str(own_home / "endpoints" / "mine")
    finally:
        provider.undeploy("mine")
        store.close()


def test_cli_deploy_from_a_project_with_its_own_serving_and_providers(
    user_project: Path, own_home: Path, tmp_path: Path
) -> None:
    """The same through ``mlcloud deploy``. ``-P`` runs the CLI as its console script does: with
    the script's directory, not the working directory, first on ``sys.path`` (``python -m``
    from such a project would hand the CLI process itself the project's ``providers``)."""
    model = make_custom_model(tmp_path / "models", "b")
    cli = [sys.executable, "-P", *MLCLOUD[1:]]
    env = cli_env(MLCLOUD_HOME=str(own_home))
    run = {"cwd": user_project, "env": env, "capture_output": True, "text": True, "timeout": 180}
    try:
        deploy = [*cli, "deploy", str(model), "--name", "mine", "-o", "json", "--trust-code"]
        out = subprocess.run(deploy, **run)
        assert out.returncode == 0, out.stderr + out.stdout
        url = json.loads(out.stdout)["url"]
        assert _predict_http(url, None) == (200, {"predictions": ["b"]})
    finally:
        gone = subprocess.run([*cli, "undeploy", "mine"], **run)
    assert gone.returncode == 0, gone.stderr
