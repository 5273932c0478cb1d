"""Ray jobs beyond the conformance suite: staging by digest, attempts and their logs, resources,
cancel of escaped processes, max_runtime, and the cluster started on first use."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from mlcloud.api import Job
from mlcloud.config import Profile
from mlcloud.errors import QuotaExceeded
from mlcloud.records import JobRecord, JobState
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.ray.cluster import LocalCluster, user_processes
from providers.ray.provider import RayProvider
from providers.ray.settings import RaySettings
from tests.providers.ray.conftest import RayCluster
from tests.providers.ray.test_conformance import stored_request


def make_job(tmp_path: Path, script: str, **fields: Any) -> TrainingJob:
    (tmp_path / "main.py").write_text(script)
    return TrainingJob(name="rt", source=str(tmp_path), command=["python", "main.py"], **fields)


def settle(provider: RayProvider, job_id: str, timeout: float = 90) -> JobRecord:
    """Wait as ``mlcloud wait`` does: advancing the job (restarts happen here)."""
    return Job(provider, provider.store.get_job(job_id)).wait(timeout=timeout, poll=0.2)


def test_unchanged_source_uploads_nothing(ray_cluster: RayCluster, tmp_path: Path) -> None:
    provider = ray_cluster.provider()
    spec = make_job(tmp_path, f"print({uuid.uuid4().hex!r})")  # content no test sent before
    first = provider.submit_job(provider.plan_job(spec))
    again = provider.submit_job(provider.plan_job(spec))
    assert first.details["staged_bytes"] > 0
    assert again.details["staged_bytes"] == 0
    assert settle(provider, first.id).state is JobState.SUCCEEDED
    assert settle(provider, again.id).state is JobState.SUCCEEDED


FLAKY = """\
import pathlib, sys
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("x")
    print("attempt one fails", flush=True)
    sys.exit(3)
print("attempt two succeeds", flush=True)
"""


def test_a_failed_attempt_is_resubmitted_and_followed(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    provider = ray_cluster.provider()
    spec = make_job(tmp_path, FLAKY, max_restarts=1, resources={"cpus": 1}).model_copy(
        update={"command": ["python", "main.py", str(tmp_path / "marker")]}
    )
    record = provider.submit_job(provider.plan_job(spec))
    lines = list(Job(provider, record).logs(follow=True))  # advances between attempts
    final = provider.job_status(record.id)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2
    history = final.details["attempts"]
    assert [(a["submission_id"], a["status"], a["exit_code"]) for a in history] == [
        (f"{record.id}-a1", "FAILED", 3),
        (f"{record.id}-a2", "SUCCEEDED", 0),
    ]
    heads = [i for i, line in enumerate(lines) if line.startswith("[mlcloud] attempt ")]
    assert [lines[i] for i in heads] == [
        f"[mlcloud] attempt 1 ({record.id}-a1)",
        f"[mlcloud] attempt 2 ({record.id}-a2)",
    ]
    assert "attempt one fails" in lines[heads[0] : heads[1]]
    assert "attempt two succeeds" in lines[heads[1] :]
    assert lines == list(provider.job_logs(record.id)), "following shows what reading shows"
    # the second attempt is the first one's request, re-numbered
    first, second = (stored_request(provider, a["submission_id"]) for a in history)
    assert second["submission_id"] == f"{record.id}-a2"
    assert second["runtime_env"] == first["runtime_env"]
    assert second["entrypoint_num_cpus"] == first["entrypoint_num_cpus"] == 1
    assert second["entrypoint"] == first["entrypoint"]
    assert second["metadata"] == {**first["metadata"], "mlcloud_attempt": "2"}


def test_exhausted_restarts_fail_with_the_exit_code(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    provider = ray_cluster.provider()
    spec = make_job(tmp_path, "import sys; sys.exit(3)", max_restarts=1)
    record = provider.submit_job(provider.plan_job(spec))
    final = settle(provider, record.id)
    assert (final.state, final.exit_code, final.attempts) == (JobState.FAILED, 3, 2)
    events = [e.get("message") or "" for e in provider.store.job_events(record.id)]
    assert any("attempt 2 of 2 is due" in m for m in events), events


def test_resources_reach_the_jobs_api(ray_cluster: RayCluster, tmp_path: Path) -> None:
    provider = ray_cluster.provider()
    spec = make_job(tmp_path, "print('sized')", resources={"cpus": 1, "memory": "64Mi"})
    plan = provider.plan_job(spec)
    record = provider.submit_job(plan)
    stored = stored_request(provider, str(record.native_id))
    assert stored == json.loads(json.dumps(dict(plan.steps[0].request)))
    assert (stored["entrypoint_num_cpus"], stored["entrypoint_memory"]) == (1, 64 * 2**20)
    assert settle(provider, record.id).state is JobState.SUCCEEDED


ESCAPE = """\
import pathlib, subprocess, sys, time
# a daemon that leaves the entrypoint's process tree and ignores SIGTERM
subprocess.run(["sh", "-c", "trap '' TERM; sleep 300 & echo $! > " + sys.argv[1]], check=True)
print("daemon started", flush=True)
time.sleep(300)
"""


def test_cancel_kills_what_escaped_the_job(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """Ray ends the entrypoint's process tree; a daemon of the job that left it (reparented to
    init, ignoring SIGTERM) is found by the job's id and killed by mlcloud."""
    provider = ray_cluster.provider()
    pidfile = tmp_path / "daemon.pid"
    spec = make_job(tmp_path, ESCAPE).model_copy(
        update={"command": ["python", "main.py", str(pidfile)]}
    )
    record = provider.submit_job(provider.plan_job(spec))
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the job never started its daemon"
        time.sleep(0.2)
    daemon = psutil.Process(int(pidfile.read_text()))
    cancelled = provider.cancel_job(record.id)
    assert cancelled.state is JobState.CANCELLED
    assert "1 leftover process(es) killed" in (cancelled.message or "")
    gone, _ = psutil.wait_procs([daemon], timeout=5)  # SIGKILL lands asynchronously
    assert gone or daemon.status() == psutil.STATUS_ZOMBIE  # (this container's init reaps none)
    assert user_processes(record.id) == []


def test_max_runtime_stops_the_job(ray_cluster: RayCluster, tmp_path: Path) -> None:
    provider = ray_cluster.provider()
    spec = make_job(tmp_path, "import time; time.sleep(300)", max_runtime=3)
    record = provider.submit_job(provider.plan_job(spec))
    final = settle(provider, record.id, timeout=60)
    assert final.state is JobState.FAILED
    assert "max_runtime" in (final.message or "")


def test_the_started_cluster_is_reused(ray_cluster: RayCluster) -> None:
    """A profile without address in the home that started the cluster finds it running."""
    profile = Profile("ray", "ray", {"temp_dir": ray_cluster.info.temp_dir})
    started = time.monotonic()
    provider = RayProvider(profile, Store.open(ray_cluster.home))
    assert provider.clients.endpoint.url == ray_cluster.info.dashboard_url
    assert provider.clients.jobs.list_jobs() is not None
    assert time.monotonic() - started < 10, "it was started again"
    assert provider.clients.cluster.info() == ray_cluster.info


def test_a_job_no_node_can_hold_is_refused(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """On the cluster mlcloud started (fixed nodes) such a job would wait forever."""
    profile = Profile("ray", "ray", {"temp_dir": ray_cluster.info.temp_dir})
    provider = RayProvider(profile, Store.open(ray_cluster.home))
    spec = make_job(tmp_path, "print('big')", resources={"cpus": 64, "memory": "1Gi"})
    with pytest.raises(QuotaExceeded, match=r"CPU 64.*largest node has CPU 2") as err:
        provider.submit_job(provider.plan_job(spec))
    assert err.value.code == "NoNodeFits" and "num_cpus" in (err.value.hint or "")
    assert provider.list_jobs() == []


def test_a_stale_record_is_not_a_running_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, RaySettings())
    cluster.dir.mkdir(parents=True)
    (cluster.dir / "auth_token").write_text("t")
    cluster.state_file.write_text(
        json.dumps(
            {
                "id": "gone",
                "dashboard_url": "http://127.0.0.1:9",  # discard: nothing answers
                "gcs_address": "127.0.0.1:9",
                "temp_dir": str(tmp_path / "t"),
                "token_file": str(cluster.dir / "auth_token"),
                "started_at": 0.0,
            }
        )
    )
    assert cluster.info() is not None
    assert cluster.running() is None
