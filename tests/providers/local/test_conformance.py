"""The local provider passes the provider conformance suite with real subprocesses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlcloud.config import Profile
from mlcloud.provider import JobRecord, Provider
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider
from tests.conformance.jobs import LOG_LINE, JobConformance

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
