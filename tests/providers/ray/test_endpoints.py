"""Ray Serve endpoints on the real test cluster, beyond the conformance suite: an update serves
every request while it happens, a failed update leaves the old model serving, a failed create
leaves nothing, autoscaling bounds reach Serve, a job trained on Ray is served by its id, and
Serve is reached only with the token and only on loopback. Each test deploys as little as it
can: the Ray part of CI has a time budget."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from mlcloud.api import build_deployment
from mlcloud.errors import AuthError, NotFoundLocally, ProviderError
from mlcloud.records import EndpointState, JobState, jsonable
from mlcloud.specs import Deployment, load_job
from providers.ray.endpoint_plan import DEPLOYMENT
from providers.ray.endpoints import serve_details
from providers.ray.provider import RayProvider
from tests.conformance.endpoints import PAYLOAD, make_custom_model
from tests.providers.ray.conftest import RayCluster
from tests.providers.ray.test_endpoint_conformance import received_config, trusted

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[3]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Hammer(threading.Thread):
    """POSTs PAYLOAD to ``url`` back to back until stopped (at most ``limit_s`` seconds),
    counting each answer: the model's first prediction, or the HTTP status / error."""

    def __init__(self, url: str, limit_s: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.url, self.limit_s = url, limit_s
        self.seen: Counter[str] = Counter()
        self.order: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        data = json.dumps(PAYLOAD).encode()
        headers = {"Content-Type": "application/json"}
        while not self.halt.is_set() and time.monotonic() < deadline:
            request = urllib.request.Request(self.url, data=data, headers=headers)
            try:
                with _OPENER.open(request, timeout=30) as resp:
                    answer = str(json.loads(resp.read())["predictions"][0])
            except urllib.error.HTTPError as err:
                answer = f"HTTP {err.code}"
            except OSError as err:
                answer = f"error {type(err).__name__}"
            self.seen[answer] += 1
            if not self.order or self.order[-1] != answer:
                self.order.append(answer)

    def stop(self) -> Counter[str]:
        self.halt.set()
        self.join(timeout=60)
        return self.seen


class ReplicaWatch(threading.Thread):
    """Polls Serve for the application's RUNNING replicas until stopped: the fewest seen."""

    def __init__(self, provider: RayProvider, name: str, limit_s: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.provider, self.name, self.limit_s = provider, name, limit_s
        self.fewest: int | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self.halt.wait(0.1) and time.monotonic() < deadline:
            app = serve_details(self.provider)["applications"][self.name]
            deployment = app["deployments"].get(DEPLOYMENT)
            if deployment is None:  # not listed while Serve builds the new config
                continue
            running = sum(r["state"] == "RUNNING" for r in deployment["replicas"])
            self.fewest = running if self.fewest is None else min(self.fewest, running)

    def stop(self) -> int | None:
        self.halt.set()
        self.join(timeout=60)
        return self.fewest


def _status(url: str, method: str = "GET", token: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = b'{"applications": []}' if method == "PUT" else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _listening(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


@pytest.fixture
def provider(ray_cluster: RayCluster) -> RayProvider:
    return ray_cluster.provider()


def test_update_serves_throughout_and_a_failed_update_keeps_the_old_model(
    provider: RayProvider, tmp_path: Path
) -> None:
    name = "ray-rollout"
    model_a, model_b = make_custom_model(tmp_path, "a"), make_custom_model(tmp_path, "b")
    replicas = {"min": 1, "max": 2, "target": 2}
    try:
        plan = provider.plan_deploy(trusted(name, str(model_a), replicas=replicas))
        record = provider.deploy(plan)
        assert record.state is EndpointState.READY and record.url
        # autoscaling bounds, as Serve holds them
        assert received_config(provider, name) == jsonable(plan.steps[0].request)
        autoscaling = plan.steps[0].request["applications"][0]["deployments"][0]
        assert autoscaling["autoscaling_config"] == {
            "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
            "target_ongoing_requests": 2,
        }  # fmt: skip

        # The update: new replicas start beside the old, which serve until they are ready
        # (Serve's default stops the old first; its proxy then holds requests meanwhile).
        hammer, watch = Hammer(f"{record.url}/predict"), ReplicaWatch(provider, name)
        hammer.start()
        watch.start()
        updated = provider.deploy(provider.plan_deploy(trusted(name, str(model_b))))
        time.sleep(0.5)  # a few requests after the switch
        seen, fewest = hammer.stop(), watch.stop()
        assert updated.state is EndpointState.READY and updated.url == record.url
        assert set(seen) == {"a", "b"}, f"every request answered by a model: {seen}"
        assert hammer.order[-1] == "b", hammer.order
        assert fewest is not None and fewest >= 1, "a moment without a running replica"

        # An update whose replicas cannot load (an untrusted custom predictor) fails; the
        # previous model keeps serving, during and after.
        hammer = Hammer(f"{record.url}/predict")
        hammer.start()
        untrusted = Deployment(name=name, model=str(make_custom_model(tmp_path, "c")))
        with pytest.raises(ProviderError, match="nothing says to trust it"):
            provider.deploy(provider.plan_deploy(untrusted))
        seen = hammer.stop()
        assert set(seen) == {"b"}, f"the old model answered every request: {seen}"
        after = provider.endpoint_status(name)
        assert after.state is EndpointState.READY, after.message
        assert after.model_sha256 == updated.model_sha256
        assert provider.predict(name, PAYLOAD)["predictions"] == ["b", "b"]

        # Deploying the running model again changes nothing and uploads nothing.
        again = provider.deploy(provider.plan_deploy(trusted(name, str(model_b))))
        assert again.state is EndpointState.READY and again.details["staged_bytes"] == 0
        assert provider.predict(name, PAYLOAD)["predictions"] == ["b", "b"]
    finally:
        provider.undeploy(name)
    assert name not in serve_details(provider).get("applications", {})


def test_failed_create_leaves_nothing(provider: RayProvider, tmp_path: Path) -> None:
    name = "ray-broken"
    untrusted = Deployment(name=name, model=str(make_custom_model(tmp_path, "x")))
    with pytest.raises(ProviderError, match="nothing says to trust it"):
        provider.deploy(provider.plan_deploy(untrusted))
    with pytest.raises(NotFoundLocally):
        provider.store.get_endpoint(name, provider=provider.name)
    assert name not in serve_details(provider).get("applications", {})
    assert provider.undeploy(name) is None


def test_a_wrong_token_is_an_auth_error(ray_cluster: RayCluster, tmp_path: Path) -> None:
    token_file = tmp_path / "wrong-token"
    token_file.write_text("not-the-token")
    wrong = ray_cluster.provider(name="ray-wrong-token", token_file=str(token_file))
    with pytest.raises(AuthError), wrong.mapped():
        serve_details(wrong)


def test_a_job_trained_on_ray_is_served_by_its_id_securely(
    provider: RayProvider, ray_cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mlcloud deploy JOB --provider ray``: examples/iris trains on the cluster, then its job
    id is deployed (the model is found and trusted through the job record) and predicts, also
    through the server's predict gateway. Serve is secure by default: its REST API answers 401
    without the cluster's token (a refused PUT changes nothing), and its proxy listens on
    loopback only."""
    job = load_job(REPO / "examples" / "iris" / "job.yaml", ["resources.memory=null"])
    record = provider.submit_job(provider.plan_job(job))
    deadline = time.monotonic() + 120
    while not record.state.terminal and time.monotonic() < deadline:
        time.sleep(1)
        record = provider.job_status(record.id)
    assert record.state is JobState.SUCCEEDED, "\n".join(provider.job_logs(record.id))[-3000:]
    deployment = build_deployment(record.id, "ray-iris", provider.store)
    assert deployment.source_job == record.id
    try:
        endpoint = provider.deploy(provider.plan_deploy(deployment))
        assert endpoint.source_job == record.id and endpoint.state is EndpointState.READY
        answer = provider.predict("ray-iris", {"instances": [[5.1, 3.5, 1.4, 0.2]]})
        assert answer == {"predictions": [0]}
        through_the_gateway(ray_cluster, tmp_path, monkeypatch)

        api = f"{ray_cluster.info.dashboard_url}/api/serve/applications/"
        for method in ("GET", "PUT"):
            assert _status(api, method) == 401, f"{method} without a token"
            assert _status(api, method, token="not-the-token") in (401, 403), method
        assert _status(api, "GET", token=ray_cluster.info.token()) == 200
        port = provider.settings.serve_port
        assert endpoint.url == f"http://127.0.0.1:{port}/ray-iris"
        assert _listening(port) == {"127.0.0.1"}, "the Serve proxy listens on loopback only"
        assert "ray-iris" in serve_details(provider)["applications"], "a refused PUT did nothing"
    finally:
        provider.undeploy("ray-iris")


def through_the_gateway(
    ray_cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /v1/endpoints/ray-iris:predict`` on the server's app (in this process, which
    reaches the cluster): forwarded to the Serve proxy, the model's answer passed on,
    attributed to the deployed version and counted per version."""
    from mlcloud.server.upstreams import VERSION_HEADER, record_version
    from mlcloud.store import Store
    from tests.server.gateway_helpers import app_server, predict

    config = tmp_path / "mlcloud.yaml"
    profile = {"type": "ray", **ray_cluster.settings()}
    config.write_text(json.dumps({"profiles": {"ray-test": profile}}))  # JSON is YAML
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    version = record_version(Store.open().get_endpoint("ray-iris"))
    with app_server() as url:
        resp = predict(url, "ray-iris", json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode())
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"predictions": [0]}
        assert resp.headers[VERSION_HEADER] == version
        bad = predict(url, "ray-iris", b'{"instances": "not rows"}')
        assert 400 <= bad.status_code < 500, bad.text  # the model's refusal, passed on
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert f'endpoint="ray-iris",version="{version}"' in text
