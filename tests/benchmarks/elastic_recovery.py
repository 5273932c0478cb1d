"""Elastic recovery on CPU: SIGKILL one DDP worker → the next training step after resume.

Runs examples/ddp through the local provider with 2 local nodes (gloo), kills rank 1 mid-run,
and measures the time to the first 'resumed from step' line and to the next step after it.
Median of N trials. Run: python tests/benchmarks/elastic_recovery.py [N]
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def trial() -> tuple[float, float]:
    from mlcloud.config import Profile
    from mlcloud.specs import load_job
    from mlcloud.store import Store
    from providers.local import LocalProvider, procs

    provider = LocalProvider(Profile("local", "local"), Store.open())
    job = load_job(REPO / "examples/ddp/job.yaml", [
        "resources.accelerators=null", "nodes={min: 1, max: 2}", "hyperparameters.steps=400",
        "hyperparameters.checkpoint_every=5", "hyperparameters.step_delay=0.02",
        "hyperparameters.width=64",
    ])  # fmt: skip
    record = provider.submit_job(provider.plan_job(job))
    killed = resumed = stepped = None
    for line in provider.job_logs(record.id, follow=True):
        now = time.monotonic()
        if killed is None and "step 50 " in line:
            worker = next(
                p
                for p in procs.job_processes(record.id)
                if p.environ().get("RANK") == "1" and "train.py" in " ".join(p.cmdline())
            )
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
        elif killed is not None and resumed is None and "resumed from step" in line:
            resumed = now
        elif resumed is not None and stepped is None and "] step " in line:
            stepped = now
            provider.cancel_job(record.id)
    assert killed and resumed and stepped, "the job did not recover"
    return resumed - killed, stepped - killed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    os.environ["MLCLOUD_HOME"] = tempfile.mkdtemp(prefix="mlcloud-bench-")
    results = [trial() for _ in range(runs)]
    to_resume = statistics.median(r[0] for r in results)
    to_step = statistics.median(r[1] for r in results)
    print(f"median of {runs} trials: SIGKILL → resumed {to_resume:.1f} s, "
          f"→ next step {to_step:.1f} s (target <= 10 s)")  # fmt: skip
    for i, (a, b) in enumerate(results, 1):
        print(f"  trial {i}: resumed {a:.1f} s, next step {b:.1f} s")


if __name__ == "__main__":
    main()
