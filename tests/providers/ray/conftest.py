"""A real Ray cluster for the Ray tests: a head and a worker node, in a network namespace that
has only loopback.

The cluster is the one mlcloud starts itself (``providers/ray/cluster.py``): a ``RayProvider``
whose profile has no address starts it on first use (token auth, 127.0.0.1, usage stats off),
then one more node joins. The tests reach it as any cluster is reached, through a profile with
``address`` and ``token_file`` (``ray_cluster.provider()``).

Ray's listeners may bind every interface, so the pytest process's main thread moves into a new
network namespace (``netns.py``) for the tests of this folder and goes back after them: the Ray
processes it starts, and the test bodies, see only ``lo``. When the namespace cannot be made
(no CAP_SYS_ADMIN) the tests fail, loudly; they are never skipped. At the end every process of
the cluster (found by its markers, not by name: other clusters on the machine are untouched) is
stopped, and the teardown fails if one survives.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlcloud.config import Profile
from mlcloud.store import Store
from providers.ray import RayProvider
from providers.ray.cluster import ClusterInfo, LocalCluster, cluster_processes
from tests.providers.ray.netns import LoopbackNamespace, NamespaceError

NODE_CPUS = 2  # logical CPUs of each node (Ray may over-subscribe the machine's)
WORKER = "worker-1"


@dataclass
class RayCluster:
    """The running test cluster."""

    home: Path  # the MLCLOUD_HOME that started it
    cluster: LocalCluster
    info: ClusterInfo
    nodes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """A profile's settings for this cluster (as for any cluster: address and token)."""
        return {
            "address": self.info.dashboard_url,
            "token_file": self.info.token_file,
            "storage": str(self.home / "storage"),
            "cancel_grace": 3,
            **extra,
        }

    def provider(self, name: str = "ray-test", **extra: Any) -> RayProvider:
        """A provider on this cluster, its store in the test's own MLCLOUD_HOME."""
        return RayProvider(Profile(name, "ray", self.settings(**extra)), Store.open())


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    namespace = LoopbackNamespace()
    try:
        namespace.enter()
    except (NamespaceError, OSError) as err:
        pytest.fail(
            f"the Ray tests need a network namespace with only loopback and cannot make one: "
            f"{err} (run them as root, or with CAP_SYS_ADMIN)",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("ray-cluster-home")
    temp_dir = tempfile.mkdtemp(prefix="mlc-ray-", dir="/tmp")  # short: Ray's sockets live there
    profile = Profile("ray-local", "ray", {"num_cpus": NODE_CPUS, "temp_dir": temp_dir})
    starter = RayProvider(profile, Store.open(home))
    cluster = starter.clients.cluster
    try:
        started = time.monotonic()
        starter.clients.jobs  # noqa: B018 (started on first use, as for a user)
        head = time.monotonic() - started
        cluster.add_node(WORKER, num_cpus=NODE_CPUS)
        info = cluster.info()
        assert info is not None
        yield RayCluster(
            home,
            cluster,
            info,
            nodes=["head", WORKER],
            timings={"head_s": head, "worker_s": time.monotonic() - started - head},
        )
    finally:
        _teardown(cluster, namespace, temp_dir)


def _teardown(cluster: LocalCluster, namespace: LoopbackNamespace, temp_dir: str) -> None:
    info = cluster.info()
    try:
        cluster.stop(grace=2)
        left = cluster_processes(info.id, info.temp_dir) if info else []
        assert not left, f"Ray processes outlived the cluster's stop: {[p.pid for p in left]}"
    finally:
        namespace.leave()
        shutil.rmtree(temp_dir, ignore_errors=True)
