"""The local cluster's bookkeeping without Ray: a failed start leaves nothing running, and only
the cluster's own processes are ever stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mlcloud.errors import ProviderError
from providers.ray import cluster
from providers.ray.cluster import CLUSTER_ENV, LocalCluster, cluster_processes
from providers.ray.settings import RaySettings

# Stands in for `ray start`: leaves a daemon behind (its own session, as Ray's are), then fails.
FAILING_START = (
    "import subprocess, sys\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],"
    " start_new_session=True)\n"
    "print('ray start: something went wrong', flush=True)\n"
    "sys.exit(1)\n"
)


def test_a_failed_start_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "ray_cli", lambda: [sys.executable, "-c", FAILING_START, "--"])
    local = LocalCluster(tmp_path, RaySettings(temp_dir=str(tmp_path / "t")))
    with pytest.raises(ProviderError) as err:
        local.ensure()
    assert err.value.code == "ClusterStartFailed"
    assert "something went wrong" in str(err.value)
    info = local.info()
    assert info is not None, "the attempt is recorded"
    assert cluster_processes(info.id, info.temp_dir) == []


def test_stop_ends_only_this_clusters_processes(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path, RaySettings(temp_dir=str(tmp_path / "t")))
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    ours = subprocess.Popen(sleeper, env={CLUSTER_ENV: "abc"}, start_new_session=True)
    theirs = subprocess.Popen(sleeper, env={CLUSTER_ENV: "another"}, start_new_session=True)
    local.dir.mkdir(parents=True)
    local.state_file.write_text(
        '{"id": "abc", "dashboard_url": "http://127.0.0.1:9", "gcs_address": "127.0.0.1:9",'
        f' "temp_dir": "{tmp_path / "t"}", "token_file": "x", "started_at": 0}}'
    )
    try:
        deadline = time.monotonic() + 10
        while not cluster_processes("abc", str(tmp_path / "t")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert local.stop(grace=2) == 1
        ours.wait(timeout=5)  # ended (psutil reaped it, so Popen cannot tell the signal)
        assert theirs.poll() is None and psutil.pid_exists(theirs.pid)
        assert local.info() is None
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
