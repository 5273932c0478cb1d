"""The cluster and its Jobs API client of one provider instance, each made once, on first use.

``endpoint`` is where the Jobs API is and the token it takes: the profile's ``address`` (and
``token`` / ``token_file``), or the single-machine cluster mlcloud starts (``cluster.py``).
Before the SDK client is made, one plain request without a token tells whether the cluster
enforces auth: one that does not is refused unless the profile says ``insecure: true`` (then a
warning each time), and so is a cluster older than Ray 2.54 (unauthenticated-API CVEs:
CVE-2023-48022, CVE-2025-62593, CVE-2026-27482).

The test seam: a profile's ``address`` and ``token_file`` point the provider at any cluster.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import (
    AuthError,
    ConfigError,
    Origin,
    ProviderError,
    ProviderUnavailable,
    Transient,
)
from providers.ray.cluster import LocalCluster, http_status
from providers.ray.settings import RaySettings

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

INSTALL = "pip install 'mlcloud[ray]'"
MIN_CLUSTER_VERSION = (2, 54)
log = logging.getLogger("mlcloud.ray")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the cluster's own address
_CHATTY = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")


@dataclass(frozen=True)
class Endpoint:
    """The Jobs API of a cluster and the token it takes."""

    url: str
    token: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class Clients:
    def __init__(self, settings: RaySettings, home: Path, origin: Origin) -> None:
        self.settings = settings
        self.home = home
        self.origin = origin

    @cached_property
    def cluster(self) -> LocalCluster:
        """The single-machine cluster of this ``$MLCLOUD_HOME`` (profiles without address)."""
        return LocalCluster(self.home, self.settings, self.origin)

    @cached_property
    def endpoint(self) -> Endpoint:
        if self.settings.address is None:
            info = self.cluster.ensure()  # started on first use
            return Endpoint(info.dashboard_url, info.token())
        try:
            token = self.settings.read_token()
        except OSError as err:
            raise ConfigError(
                f"profile {self.origin.profile!r}: cannot read token_file: {err}",
                hint="point token_file at a file holding the cluster's token",
            ) from None
        return Endpoint(self.settings.address, token)

    @cached_property
    def jobs(self) -> JobSubmissionClient:
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as err:
            raise ProviderUnavailable("ray", INSTALL, str(err)) from None
        for name in _CHATTY:  # each upload and websocket close is logged at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        endpoint = self.endpoint
        check_auth(endpoint, self.settings.insecure, self.origin)
        client = JobSubmissionClient(endpoint.url, headers=endpoint.headers)
        check_version(getattr(client, "_server_ray_version", None), self.settings, self.origin)
        return client

    def get_json(self, path: str) -> Any:
        """``GET <Jobs API><path>`` with the token, as JSON (reads the SDK does not offer)."""
        endpoint = self.endpoint
        request = urllib.request.Request(f"{endpoint.url}{path}", headers=endpoint.headers)  # noqa: S310
        try:
            with _OPENER.open(request, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:  # in the SDK's own words: errors.translate maps it
            body = err.read().decode(errors="replace")
            raise RuntimeError(f"Request failed with status code {err.code}: {body}.") from None
        except urllib.error.URLError as err:
            raise ConnectionError(f"Failed to connect to Ray at {endpoint.url}: {err}") from None


def check_auth(endpoint: Endpoint, insecure: bool, origin: Origin) -> None:
    """Refuse a cluster that answers without a token (unless ``insecure``), and a missing
    token for one that wants it, before the SDK sends anything."""
    try:
        status = http_status(f"{endpoint.url}/api/jobs/", token=None, timeout=10)
    except OSError as err:
        raise origin.error(
            Transient,
            f"{origin}: cannot reach the Ray Jobs API at {endpoint.url}: {err}",
            code="Unreachable",
            hint="is the cluster up? check the profile's address",
        ) from None
    if status in (401, 403):
        if endpoint.token is None:
            raise origin.error(
                AuthError,
                f"{origin}: the Ray cluster at {endpoint.url} requires a token",
                code="NoToken",
                hint="set token_file: in the profile (on the head: ray get-auth-token)",
            )
        return
    if insecure:
        log.warning(
            "mlcloud: the Ray cluster at %s accepts requests without a token: anyone who can "
            "reach it can run code on it (insecure: true in profile %r)",
            endpoint.url,
            origin.profile,
        )
        return
    raise origin.error(
        AuthError,
        f"{origin}: the Ray cluster at {endpoint.url} accepts requests without a token "
        "(anyone who can reach it can run code on it); refusing to use it",
        code="InsecureCluster",
        hint="start the cluster with RAY_AUTH_MODE=token (Ray >= 2.54), or set insecure: true "
        "in the profile to use it anyway",
    )


def check_version(version: str | None, settings: RaySettings, origin: Origin) -> None:
    """Refuse a cluster older than Ray 2.54 (its APIs have unauthenticated-access CVEs)."""
    if version is None or settings.insecure:
        return
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return
    if found < MIN_CLUSTER_VERSION:
        raise origin.error(
            ProviderError,
            f"{origin}: the cluster runs Ray {version}; mlcloud needs Ray >= 2.54 "
            "(earlier versions have unauthenticated-API CVEs: CVE-2023-48022, CVE-2025-62593, "
            "CVE-2026-27482)",
            code="ClusterTooOld",
            hint="upgrade the cluster, or set insecure: true in the profile to use it anyway",
        )
