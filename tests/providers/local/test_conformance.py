"""The local provider passes the provider conformance suite with real subprocesses."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from mlcloud.config import Profile
from mlcloud.provider import Provider
from mlcloud.records import JobRecord, Plan
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider
from providers.local.supervisor import LAUNCHED_FILE
from tests.conformance.jobs import LOG_LINE, JobConformance, Sent

SCRIPTS = {
    "succeed": f"print({LOG_LINE!r})",
    "fail": "import sys; print('failing'); sys.exit(3)",
    "long": "import time; print('working', flush=True); time.sleep(300)",
}


class TestLocalJobs(JobConformance):
    @pytest.fixture
    def provider(self) -> Provider:
        return LocalProvider(Profile("local", "local", {"cancel_grace": 3}), Store.open())

    def make_job(self, tmp_path: Path, behaviour: str) -> TrainingJob:
        (tmp_path / "main.py").write_text(SCRIPTS[behaviour])
        return TrainingJob(
            name=f"conf-{behaviour}", source=str(tmp_path), command=[sys.executable, "main.py"]
        )

    def settle(self, provider: Provider, record: JobRecord, behaviour: str) -> JobRecord:
        return self.wait_for(provider, record.id)

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        # Local runs anything it can; it refuses data it cannot reach.
        return self.make_job(tmp_path, "succeed").model_copy(
            update={"inputs": {"train": "s3://bucket/data"}}
        )

    def received(self, provider: Provider, plan: Plan[TrainingJob], record: JobRecord) -> Sent:
        """What each process of the job's first attempt was really started with.

        The far end of a local job is the process the supervisor starts. Right after starting
        it, the supervisor reads from the kernel (psutil: ``/proc/<pid>/cmdline``, ``cwd``,
        ``environ``) what the process got and appends it to ``launched.jsonl`` in the job dir
        (a job of this suite ends within milliseconds, so reading ``/proc`` from here would race
        it). The process inherits the supervisor's environment, so of ``environ`` the record
        keeps the keys the plan sets, with the values the process really has, and every key
        whose value differs from what the supervisor inherited: a planned variable that never
        arrived is missing (or has the inherited value), one the plan does not show is extra.
        """
        path = Path(record.details["job_dir"]) / LAUNCHED_FILE
        first: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while len(first) < len(plan.steps):
            assert time.monotonic() < deadline, f"{path} never listed the started processes"
            time.sleep(0.05)
            text = path.read_text() if path.exists() else ""
            lines = [
                json.loads(line) for line in text.splitlines(keepends=True) if line[-1:] == "\n"
            ]
            first = sorted((x for x in lines if x["attempt"] == 1), key=lambda x: x["step"])
        return [
            ("local.Popen", {"argv": x["argv"], "env": x["env"], "cwd": x["cwd"]}) for x in first
        ]
