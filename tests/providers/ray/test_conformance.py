"""The Ray provider passes the job conformance suite on a real Ray cluster (head + worker)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mlcloud.provider import Provider
from mlcloud.records import JobRecord, Plan
from mlcloud.specs import TrainingJob
from providers.ray.job_plan import SUBMIT_JOB
from providers.ray.provider import RayProvider
from tests.conformance.jobs import LOG_LINE, JobConformance, Sent
from tests.providers.ray.conftest import RayCluster

SCRIPTS = {
    "succeed": f"print({LOG_LINE!r})",
    "fail": "import sys; print('failing'); sys.exit(3)",
    "long": "import time; print('working', flush=True); time.sleep(300)",
}


class TestRayJobs(JobConformance):
    @pytest.fixture
    def provider(self, ray_cluster: RayCluster) -> Provider:
        return ray_cluster.provider()

    def make_job(self, tmp_path: Path, behaviour: str) -> TrainingJob:
        (tmp_path / "main.py").write_text(SCRIPTS[behaviour])
        return TrainingJob(
            name=f"conf-{behaviour}", source=str(tmp_path), command=["python", "main.py"]
        )

    def settle(self, provider: Provider, record: JobRecord, behaviour: str) -> JobRecord:
        return self.wait_for(provider, record.id, timeout=120)

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        # A Ray job runs in the cluster's Python environment: a container image is refused.
        return self.make_job(tmp_path, "succeed").model_copy(update={"image": "python:3.11"})

    def received(self, provider: Provider, plan: Plan[TrainingJob], record: JobRecord) -> Sent:
        """What the Jobs API stored for the submission: its ``GET /api/jobs/<id>`` answer, in
        the plan's format (``submit_job``'s keyword arguments)."""
        assert isinstance(provider, RayProvider)
        return [(SUBMIT_JOB, stored_request(provider, str(record.native_id)))]


def stored_request(provider: RayProvider, submission_id: str) -> dict[str, Any]:
    """A submission as the cluster holds it, in ``submit_job``'s keyword arguments: the Jobs
    API's record (``GET /api/jobs/<id>``) and, since that leaves them out, the entrypoint's
    resources as Ray scheduled the job's supervisor actor with them (State API)."""
    info = _get(provider, f"/api/jobs/{submission_id}")
    request = {key: info[key] for key in ("entrypoint", "submission_id", "runtime_env", "metadata")}
    name = f"_ray_internal_job_actor_{submission_id}"
    query = f"detail=1&filter_keys=name&filter_predicates=%3D&filter_values={name}"
    [actor] = _get(provider, f"/api/v0/actors?{query}")["data"]["result"]["result"]
    wanted = dict(actor["required_resources"])
    for key, arg in (("CPU", "entrypoint_num_cpus"), ("GPU", "entrypoint_num_gpus")):
        if key in wanted:
            request[arg] = wanted.pop(key)
    if "memory" in wanted:
        request["entrypoint_memory"] = int(wanted.pop("memory"))
    if wanted:
        request["entrypoint_resources"] = wanted
    return request


def _get(provider: RayProvider, path: str) -> Any:
    endpoint = provider.clients.endpoint
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{endpoint.url}{path}", headers=endpoint.headers)
    with opener.open(request, timeout=10) as resp:
        return json.loads(resp.read())
