"""The DDP example under torchrun on CPU: two local workers, one SIGKILLed mid-run, resumed."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mlcloud.config import Profile
from mlcloud.records import JobState
from mlcloud.specs import load_job
from mlcloud.store import Store
from providers.local import LocalProvider, procs
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_ddp_worker_killed_job_resumes_from_checkpoint() -> None:
    provider = LocalProvider(Profile("local", "local"), Store.open())
    job = load_job(
        REPO / "examples/ddp/job.yaml",
        [
            "resources.accelerators=null",
            "nodes={min: 1, max: 2}",
            "hyperparameters.steps=120",
            "hyperparameters.checkpoint_every=10",
            "hyperparameters.step_delay=0.03",
            "hyperparameters.width=32",
        ],
    )
    record = provider.submit_job(provider.plan_job(job))
    killed_at: float | None = None
    resumed = []
    for line in provider.job_logs(record.id, follow=True):
        if killed_at is None and "step 30 " in line:
            workers = [
                p for p in procs.job_processes(record.id)
                if p.environ().get("RANK") == "1" and "train.py" in " ".join(p.cmdline())
            ]  # fmt: skip
            assert workers, "rank 1 worker not found"
            os.kill(workers[0].pid, signal.SIGKILL)
            killed_at = time.monotonic()
        if killed_at is not None and "resumed from step" in line:
            resumed.append(int(line.rsplit(" ", 1)[1]))
    final = provider.job_status(record.id)
    assert final.state is JobState.SUCCEEDED, final.message
    assert resumed and min(resumed) >= 30, "workers restarted from the checkpoint, not step 0"
    assert final.attempts >= 2
    assert (REPO / "examples/ddp").exists()
    from mlcloud import modeldir

    assert modeldir.verify(__import__("pathlib").Path(final.outputs["model_dir"]))
    assert procs.job_processes(record.id) == []
