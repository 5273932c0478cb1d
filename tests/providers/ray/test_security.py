"""Secure by default: the cluster mlcloud starts wants a token and listens on loopback only, and
mlcloud refuses a cluster that does not want a token (unless the profile says insecure)."""

from __future__ import annotations

import json
import logging
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from mlcloud.config import Profile
from mlcloud.errors import AuthError, ProviderError
from mlcloud.store import Store
from providers.ray.cluster import CLUSTER_ENV, NODE_ENV, cluster_processes
from providers.ray.provider import RayProvider
from tests.providers.ray.conftest import RayCluster

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status(url: str, token: str | None = None, data: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        with OPENER.open(urllib.request.Request(url, data=data, headers=headers), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


# ---- the cluster mlcloud started -----------------------------------------------------------------
def test_unauthenticated_requests_get_401(ray_cluster: RayCluster) -> None:
    url, token = ray_cluster.info.dashboard_url, ray_cluster.info.token()
    submit = json.dumps({"entrypoint": "echo pwned"}).encode()
    assert status(f"{url}/api/jobs/") == 401
    assert status(f"{url}/api/jobs/", data=submit) == 401, "anyone could run code"
    assert status(f"{url}/api/version") == 401
    assert status(f"{url}/api/packages/gcs/_ray_pkg_x.zip") == 401
    assert status(f"{url}/api/jobs/", token="not-the-token") == 403
    assert status(f"{url}/api/jobs/", token=token) == 200


def test_every_listener_is_on_loopback(ray_cluster: RayCluster) -> None:
    info = ray_cluster.info
    listening = {
        (conn.laddr.ip, conn.laddr.port, proc.name())
        for proc in cluster_processes(info.id, info.temp_dir)
        for conn in _connections(proc)
        if conn.status == psutil.CONN_LISTEN
    }
    assert listening, "the cluster listens somewhere"
    wide = {entry for entry in listening if entry[0] not in ("127.0.0.1", "::ffff:127.0.0.1")}
    assert not wide, f"Ray listens beyond loopback: {sorted(wide)}"


def _connections(proc: psutil.Process) -> list[psutil._common.pconn]:
    try:
        return list(proc.net_connections("inet"))
    except psutil.Error:
        return []


def test_token_is_private_and_usage_stats_are_off(ray_cluster: RayCluster) -> None:
    mode = stat.S_IMODE(Path(ray_cluster.info.token_file).stat().st_mode)
    assert mode == 0o600
    info = ray_cluster.info
    envs = []
    for proc in cluster_processes(info.id, info.temp_dir):
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get(CLUSTER_ENV) == info.id and env.get(NODE_ENV) == "head":
            envs.append(env)
    assert envs, "the head's processes carry the cluster's markers"
    for env in envs:
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_USAGE_STATS_ENABLED"] == "0"
        assert "RAY_AUTH_TOKEN" not in env, "the token travels as a file, not in environments"


# ---- clusters mlcloud did not start: a fake Jobs API ------------------------------------------
@contextmanager
def fake_jobs_api(token: str | None, version: str = "2.60.0") -> Iterator[str]:
    """A Jobs API that wants ``token`` (None: wants none) and reports Ray ``version``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            given = self.headers.get("Authorization")
            if token is not None and given != f"Bearer {token}":
                self.send_response(401 if given is None else 403)
                self.end_headers()
                return
            body = json.dumps(
                {"ray_version": version, "version": "4"} if "version" in self.path else []
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def remote(url: str, **settings: object) -> RayProvider:
    return RayProvider(Profile("onprem", "ray", {"address": url, **settings}), Store.open())


def test_a_cluster_without_auth_is_refused() -> None:
    with fake_jobs_api(token=None) as url, pytest.raises(AuthError) as err:
        remote(url).clients.jobs  # noqa: B018
    assert err.value.code == "InsecureCluster"
    assert "insecure: true" in (err.value.hint or "")


def test_insecure_true_connects_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with fake_jobs_api(token=None) as url, caplog.at_level(logging.WARNING, "mlcloud.ray"):
        assert remote(url, insecure=True).clients.jobs is not None
    assert "accepts requests without a token" in caplog.text


def test_a_cluster_that_wants_a_token_the_profile_lacks() -> None:
    with fake_jobs_api(token="s3cret") as url, pytest.raises(AuthError) as err:
        remote(url).clients.jobs  # noqa: B018
    assert err.value.code == "NoToken"


def test_the_token_file_is_sent(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    with fake_jobs_api(token="s3cret") as url:
        assert remote(url, token_file=str(tmp_path / "token")).clients.jobs is not None


def test_a_cluster_older_than_2_54_is_refused() -> None:
    with fake_jobs_api(token="s3cret", version="2.50.1") as url, pytest.raises(ProviderError) as e:
        remote(url, token="s3cret").clients.jobs  # noqa: B018
    assert e.value.code == "ClusterTooOld" and "CVE-2023-48022" in str(e.value)
