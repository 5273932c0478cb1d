"""The Azure ML provider joins the provider-agnostic job conformance suite.

The far end is the fake workspace: ``settle`` does what Azure ML would do when the job's
process ends (flip the job's status, write the user log the run history points at).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcloud.provider import JobRecord, Provider
from mlcloud.specs import Deployment, TrainingJob
from mlcloud.store import Store
from tests.conformance.endpoints import EndpointConformance
from tests.conformance.jobs import LOG_LINE, JobConformance
from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import make_provider, write_source

SCRIPTS = {
    "succeed": f"print({LOG_LINE!r})\n",
    "fail": "import sys\nsys.exit(3)\n",
    "long": "import time\ntime.sleep(3600)\n",
}


class TestAzureMLConformance(JobConformance):
    fake: Installed

    @pytest.fixture
    def provider(self, azure: Installed, store: Store) -> Provider:
        self.fake = azure
        provider: Provider = make_provider(store)
        return provider

    def make_job(self, tmp_path: Path, behaviour: str) -> TrainingJob:
        source = write_source(tmp_path / f"src-{behaviour}", SCRIPTS[behaviour])
        return TrainingJob(
            name=f"conf-{behaviour}",
            source=str(source),
            command=["python", "train.py"],
            framework={"name": "sklearn", "version": "1.5"},
        )

    def settle(self, provider: Provider, record: JobRecord, behaviour: str) -> JobRecord:
        native = str(record.native_id)
        self.fake.fake.set_job_status(native, "Running")
        assert provider.job_status(record.id).state.value == "RUNNING"
        if behaviour == "succeed":
            self.fake.fake.set_job_logs(native, f"{LOG_LINE}\n")
            self.fake.fake.set_job_status(native, "Completed")
        else:
            self.fake.fake.set_job_status(
                native,
                "Failed",
                "Execution failed. User process 'python' exited with status code 3. "
                "Please check log file 'user_logs/std_log.txt' for more details.",
            )
        return self.wait_for(provider, record.id, timeout=30)

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        return TrainingJob(
            name="elastic",
            source=str(write_source(tmp_path / "src")),
            command=["python", "train.py"],
            framework={"name": "pytorch", "version": "2.3"},
            nodes={"min": 1, "max": 4},
        )


class TestAzureMLEndpointConformance(EndpointConformance):
    """Deploy → predict → update → undeploy; the fake serves the uploaded model files with
    mlcloud's own loader, so predictions come from the model that was actually deployed."""

    endpoint_name = "conformance-ep"

    @pytest.fixture
    def provider(self, azure: Installed, store: Store) -> Provider:
        provider: Provider = make_provider(store)
        return provider

    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name=self.endpoint_name, model=model, replicas={"min": 1, "max": 4})
