"""Submit -> first user line: a Ray job on a running local cluster beside a local-provider job,
in the same run. Median of N after one warm-up each.

Two times per job, from the moment ``submit_job`` is called:
* ``started``: the user's first line runs (it prints ``time.time()``; the same clock);
* ``seen``: the submitter reads that line (``job_logs(follow=True)``: Ray's ``tail_job_logs``
  websocket, the local provider's log file).

The Ray cluster (a head, 2 logical CPUs) is started the way mlcloud does, inside a network
namespace with only loopback (root needed). Run: python tests/benchmarks/ray_launch.py [N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SCRIPT = "import time\nprint('first-line', repr(time.time()), flush=True)\n"


def one(provider: object, source: Path) -> tuple[float, float]:
    from mlcloud.provider import Provider
    from mlcloud.specs import TrainingJob

    assert isinstance(provider, Provider)
    job = TrainingJob(name="bench", source=str(source), command=["python", "main.py"])
    plan = provider.plan_job(job)
    t0 = time.time()
    record = provider.submit_job(plan)
    for line in provider.job_logs(record.id, follow=True):
        if line.startswith("first-line "):
            seen = time.time()
            started = float(line.split()[1])
            break
    else:
        raise AssertionError(f"{provider.type}: no first line")
    deadline = time.monotonic() + 60
    while not provider.job_status(record.id).state.terminal and time.monotonic() < deadline:
        time.sleep(0.1)
    return started - t0, seen - t0


def main() -> None:
    from mlcloud.config import Profile
    from mlcloud.store import Store
    from providers.local import LocalProvider
    from providers.ray.provider import RayProvider
    from tests.providers.ray.netns import LoopbackNamespace

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    home = Path(tempfile.mkdtemp(prefix="mlcloud-bench-"))
    os.environ["MLCLOUD_HOME"] = str(home)
    source = Path(tempfile.mkdtemp(prefix="src-", dir=home))
    (source / "main.py").write_text(SCRIPT)
    with LoopbackNamespace():
        store = Store.open(home)
        temp_dir = tempfile.mkdtemp(prefix="mlc-ray-", dir="/tmp")
        ray = RayProvider(Profile("ray", "ray", {"num_cpus": 2, "temp_dir": temp_dir}), store)
        local = LocalProvider(Profile("local", "local"), store)
        try:
            started = time.monotonic()
            ray.clients.jobs  # noqa: B018 (starts the cluster: not timed below)
            print(f"cluster start (first use): {time.monotonic() - started:.1f} s", flush=True)
            results: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
            for name, provider in (("local", local), ("ray", ray)):
                one(provider, source)  # warm-up: caches, the package upload
                for _ in range(runs):
                    results[name].append(one(provider, source))
        finally:
            ray.clients.cluster.stop(grace=2)
            shutil.rmtree(temp_dir, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
    for name, values in results.items():
        first = statistics.median(v[0] for v in values)
        seen = statistics.median(v[1] for v in values)
        print(f"{name:5s}: submit -> first user line runs {first:.2f} s, "
              f"-> seen by the submitter {seen:.2f} s (median of {runs})")  # fmt: skip


if __name__ == "__main__":
    main()
