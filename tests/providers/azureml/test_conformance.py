"""The Azure ML provider joins the provider-agnostic job and endpoint conformance suites.

The far end is the fake workspace: ``settle`` does what Azure ML would do when the job's
process ends (flip the job's status, write the user log the run history points at), and
``received`` / ``received_deploy`` read the writes it logged in the plan's format
(``tests/fakes/azureml/received.py``), with the values only known after an upload decoded back
into the local directories the plan names once the uploaded bytes are checked to be theirs.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from mlcloud.provider import Provider
from mlcloud.records import EndpointRecord, JobRecord, Plan
from mlcloud.specs import Deployment, TrainingJob
from mlcloud.store import Store
from providers.azureml.endpoint_plan import LOCATION
from providers.common.staging import source_dir
from tests.conformance.endpoints import EndpointConformance
from tests.conformance.jobs import LOG_LINE, JobConformance, Sent
from tests.fakes.azureml import Installed
from tests.fakes.azureml.received import local_path_of
from tests.providers.azureml.conftest import make_provider, write_source

STAGED = "_mlcloud/"  # the launcher and vendored runtime mlcloud adds to the job's code
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

    def received(self, provider: Provider, plan: Plan[TrainingJob], record: JobRecord) -> Sent:
        """The job writes the workspace received for this job id (every attempt), with the
        uploaded code asset and local inputs decoded back into their local directories."""
        fake = self.fake.fake
        sent: Sent = []
        for write in fake.received:
            # attempt n > 1 is named "<job id>-a<n>"; a job id may itself contain "-a"
            ours = re.fullmatch(re.escape(record.id) + r"(-a\d+)?", write.name)
            if write.call.startswith("jobs.") and ours:
                sent.append((write.call, self._decode_job(plan.spec, write.request)))
        return sent

    def _decode_job(self, job: TrainingJob, request: dict[str, Any]) -> dict[str, Any]:
        fake = self.fake.fake
        body = copy.deepcopy(request)
        props = body.get("properties", {})
        code = fake.resources.get(str(props.get("codeId", "")).lower(), {})
        code_uri = code.get("properties", {}).get("codeUri")
        if code_uri:
            local = local_path_of(fake.blobs, code_uri, source_dir(job.source), STAGED)
            props["codeId"] = local or props["codeId"]
        for name, given in job.inputs.items():
            sent = props.get("inputs", {}).get(name, {})
            if "://" not in given and sent.get("uri"):
                local = local_path_of(fake.blobs, sent["uri"], Path(given))
                sent["uri"] = local or sent["uri"]
        return body

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        return TrainingJob(
            name="elastic",
            source=str(write_source(tmp_path / "src")),
            command=["python", "train.py"],
            framework={"name": "pytorch", "version": "2.3"},
            nodes={"min": 1, "max": 4},
        )


DEPLOY_COLLECTIONS = ("models", "onlineEndpoints", "onlineDeployments")
WORKSPACE_LOCATION = "eastus"  # the fake workspace's location


class TestAzureMLEndpointConformance(EndpointConformance):
    """Deploy → predict → update → undeploy; the fake serves the uploaded model files with
    mlcloud's own loader, so predictions come from the model that was actually deployed."""

    endpoint_name = "conformance-ep"
    fake: Installed

    @pytest.fixture
    def provider(self, azure: Installed, store: Store) -> Provider:
        self.fake = azure
        provider: Provider = make_provider(store)
        return provider

    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name=self.endpoint_name, model=model, replicas={"min": 1, "max": 4})

    def far_end_traffic(self, provider: Provider, name: str) -> dict[str, int] | None:
        """The fake workspace's endpoint traffic (every deployment of it; those without a
        share at 0)."""
        fake = self.fake.fake
        endpoint = fake.resources[fake._key(f"/onlineEndpoints/{name}")]
        traffic = endpoint["properties"].get("traffic") or {}
        return {d: int(traffic.get(d, 0)) for d in fake.deployments(name)}

    def received_deploy(
        self, provider: Provider, plan: Plan[Deployment], record: EndpointRecord
    ) -> Sent:
        """The model, endpoint and deployment writes the workspace received for this
        endpoint; the workspace location and the uploaded model directory are decoded back
        into what the plan shows for them."""
        sent: Sent = []
        for write in self.fake.fake.received:
            collection = write.call.partition(".")[0]
            if write.name == plan.id and collection in DEPLOY_COLLECTIONS:
                sent.append((write.call, self._decode_deploy(plan.spec, write.request)))
        return sent

    def _decode_deploy(self, spec: Deployment, request: dict[str, Any]) -> dict[str, Any]:
        fake = self.fake.fake
        body = copy.deepcopy(request)
        if body.get("location") == WORKSPACE_LOCATION:
            body["location"] = LOCATION
        props = body.get("properties", {})
        uri = props.get("modelUri")
        if uri and "://" not in spec.model:
            props["modelUri"] = local_path_of(fake.blobs, uri, Path(spec.model)) or uri
        return body
