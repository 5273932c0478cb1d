"""Elastic recovery on a Ray cluster: SIGKILL the worker node mid-training -> next step after
resume, with the world size before and after, then the node returns -> the group grows back.

Starts a head and a worker node (2 logical CPUs each) the way mlcloud does, inside a network
namespace with only loopback (root needed), runs examples/ddp unchanged with
``nodes={min: 1, max: 2}`` (one worker per node), follows its log (``tail_job_logs``) and times
each phase from the kill. Median of N trials. Run: python tests/benchmarks/ray_elastic.py [N]
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
WORLD = re.compile(r"\[mlcloud\] worker rank=0 world_size=(\d+)")


def trial(provider: object, cluster: object, home: Path) -> dict[str, float]:
    from mlcloud.specs import load_job
    from providers.ray.provider import RayProvider

    assert isinstance(provider, RayProvider)
    job = load_job(REPO / "examples/ddp/job.yaml", [
        "resources.accelerators=null", "resources.cpus=2", "resources.memory=null",
        "nodes={min: 1, max: 2}", f"checkpoint={tempfile.mkdtemp(dir=home)}",
        "hyperparameters.steps=100000", "hyperparameters.checkpoint_every=10",
        "hyperparameters.step_delay=0.05", "hyperparameters.width=64",
    ])  # fmt: skip
    record = provider.submit_job(provider.plan_job(job))
    t: dict[str, float] = {}
    sizes: list[int] = []
    for line in provider.job_logs(record.id, follow=True):
        now = time.monotonic()
        found = WORLD.search(line)
        if found is not None:
            sizes.append(int(found.group(1)))
        if os.environ.get("DEBUG") and "kill" in t and "] step " not in line:
            print(f"{now - t['kill']:7.1f} {line[:160]}", flush=True)
        if "kill" not in t:
            if "[rank 0] step 50 " in line:
                t["kill"], t["size_before"] = time.monotonic(), sizes[-1]
                cluster.kill_node("worker-1")  # type: ignore[attr-defined]
        elif "resumed" not in t:
            if "resumed from step" in line:
                t["resumed"], t["size_after"] = now, sizes[-1]
        elif "stepped" not in t:
            if "] step " in line:
                t["stepped"] = t["returned"] = now  # the node comes back (ray start: ~5 s)
                cluster.add_node("worker-1", num_cpus=2)  # type: ignore[attr-defined]
        elif "grown" not in t:
            if found is not None and sizes[-1] == 2:
                t["grown"] = now
        elif "] step " in line:
            t["grown_step"] = now
            provider.cancel_job(record.id)
            break
    print(f"  world sizes in order: {sizes}", flush=True)
    return {
        "world_before": t["size_before"],
        "world_after": t["size_after"],
        "kill_to_resumed": t["resumed"] - t["kill"],
        "kill_to_next_step": t["stepped"] - t["kill"],
        "node_start_to_world_2": t["grown"] - t["returned"],
        "node_start_to_step_at_2": t["grown_step"] - t["returned"],
    }


def main() -> None:
    from mlcloud.config import Profile
    from mlcloud.store import Store
    from providers.ray.provider import RayProvider
    from tests.providers.ray.netns import LoopbackNamespace

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    home = Path(tempfile.mkdtemp(prefix="mlcloud-bench-"))
    os.environ["MLCLOUD_HOME"] = str(home)
    temp_dir = tempfile.mkdtemp(prefix="mlc-ray-", dir="/tmp")
    with LoopbackNamespace():
        settings = {"num_cpus": 2, "temp_dir": temp_dir, "cancel_grace": 3}
        provider = RayProvider(Profile("ray", "ray", settings), Store.open(home))
        cluster = provider.clients.cluster
        try:
            provider.clients.jobs  # noqa: B018 (starts the cluster)
            cluster.add_node("worker-1", num_cpus=2)
            results = []
            for n in range(runs):
                results.append(trial(provider, cluster, home))
                print(f"trial {n + 1}: {_show(results[-1])}", flush=True)
        finally:
            cluster.stop(grace=2)
            shutil.rmtree(temp_dir, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"median of {runs}: {_show(medians)}")


def _show(result: dict[str, float]) -> str:
    """World sizes as counts, the rest as seconds (log lines arrive in ~1 s chunks: Ray's
    tail_job_logs reads the file once a second at its end)."""
    return ", ".join(
        f"{k} {v:.0f}" if k.startswith("world") else f"{k} {v:.1f} s" for k, v in result.items()
    )


if __name__ == "__main__":
    main()
