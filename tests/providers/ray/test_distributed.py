"""examples/ddp unchanged as torchrun agents across the cluster's nodes, and elastic recovery
when a worker node dies."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mlcloud.records import JobRecord, JobState
from mlcloud.specs import load_job
from providers.ray.cluster import user_processes
from providers.ray.provider import RayProvider
from tests.conftest import REPO
from tests.providers.ray.conftest import NODE_CPUS, WORKER, RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]
DDP = REPO / "examples" / "ddp" / "job.yaml"
WORLD = re.compile(r"\[mlcloud\] worker rank=(\d+) world_size=(\d+) node_rank=(\d+)")
AGENT = re.compile(r"\[mlcloud\] agent started on node (\w+)")


def ddp_job(tmp_path: Path, **hparams: object) -> object:
    overrides = [
        "resources.accelerators=null",
        f"resources.cpus={NODE_CPUS}",  # a worker fills a node: one per node
        "resources.memory=null",
        "nodes={min: 1, max: 2}",
        f"checkpoint={tmp_path / 'ckpt'}",
        *(f"hyperparameters.{k}={v}" for k, v in hparams.items()),
    ]
    return load_job(DDP, overrides)


def wait(provider: RayProvider, job_id: str, until: object, timeout: float) -> JobRecord:
    deadline = time.monotonic() + timeout
    record = provider.advance_job(job_id)
    while not until(record):  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{job_id}: still {record.state} after {timeout}s"
        time.sleep(0.5)
        record = provider.advance_job(job_id)
    return record


def worlds(provider: RayProvider, job_id: str) -> list[tuple[int, int, int]]:
    """(rank, world size, node rank) of every worker start, in the order of the log."""
    text = "\n".join(provider.job_logs(job_id))
    return [(int(r), int(w), int(n)) for r, w, n in WORLD.findall(text)]


def wait_log(provider: RayProvider, job_id: str, until: object, timeout: float) -> str:
    """The job's log once ``until(log)`` holds (read every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        text = "\n".join(provider.job_logs(job_id))
        if until(text):  # type: ignore[operator]
            return text
        record = provider.job_status(job_id)
        assert not record.state.terminal, f"{job_id} ended {record.state}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"{job_id}: not seen after {timeout}s:\n{text[-3000:]}"
        time.sleep(0.5)


def test_ddp_example_on_two_nodes(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """examples/ddp, unchanged, with nodes {min: 1, max: 2}: one worker on each node, the
    checkpoints on shared storage, the model saved by rank 0."""
    provider = ray_cluster.provider()
    job = ddp_job(tmp_path, steps=20, checkpoint_every=10)
    record = provider.submit_job(provider.plan_job(job))  # type: ignore[arg-type]
    final = wait(provider, record.id, lambda r: r.state.terminal, timeout=180)
    logs = "\n".join(provider.job_logs(record.id))
    assert final.state is JobState.SUCCEEDED, logs[-3000:]
    started = worlds(provider, record.id)
    assert sorted(started) == [(0, 2, 0), (1, 2, 1)], logs[-3000:]
    assert len(set(AGENT.findall(logs))) == 2, "one agent on each of the two nodes"
    assert "[rank 0] step 20 " in logs and "[rank 1] step 20 " in logs
    assert (Path(final.outputs["model_dir"]) / "mlcloud-model.yaml").is_file()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "ckpt-00000010.pt",
        "ckpt-00000020.pt",
    ]


def test_ddp_survives_a_killed_worker_node(ray_cluster: RayCluster, tmp_path: Path) -> None:
    """The worker node is SIGKILLed mid-training -> the job resumes from its last checkpoint
    with one worker; the node comes back -> the group grows back to two, resumed from a later
    checkpoint. Then a cancel stops every process of the job."""
    provider = ray_cluster.provider()
    job = ddp_job(tmp_path, steps=100000, checkpoint_every=10, step_delay=0.05, width=64)
    record = provider.submit_job(provider.plan_job(job))  # type: ignore[arg-type]
    wait_log(provider, record.id, lambda t: "[rank 1] step 30 " in t, timeout=150)
    assert [w for _, w, _ in worlds(provider, record.id)] == [2, 2]

    assert ray_cluster.cluster.kill_node(WORKER) > 0
    after = wait_log(provider, record.id, lambda t: _resumed_at(t, 1) is not None, timeout=120)
    assert _resumed_at(after, 1) >= 30  # type: ignore[operator]

    ray_cluster.cluster.add_node(WORKER, num_cpus=NODE_CPUS)  # the node returns
    grown = wait_log(provider, record.id, lambda t: _resumed_at(t, 2) is not None, timeout=120)
    assert _resumed_at(grown, 2) > _resumed_at(after, 1)  # type: ignore[operator]
    assert [w for _, w, _ in worlds(provider, record.id)] == [2, 2, 1, 2, 2]

    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert user_processes(record.id) == [], "a process of the cancelled job is still running"


def _resumed_at(log: str, world: int) -> int | None:
    """The step the latest group of workers resumed from, once it has, if it has ``world``."""
    starts = list(WORLD.finditer(log))
    if not starts or starts[-1].group(2) != str(world):
        return None
    resumed = re.findall(r"\[rank 0\] resumed from step (\d+)", log[starts[-1].end() :])
    return int(resumed[0]) if resumed else None
