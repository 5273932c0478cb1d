"""LocalProvider: the training half lives in ``jobs.py``, endpoints in ``endpoints.py``."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlcloud.provider import Capability, EndpointRecord, JobRecord, Plan, Provider

if TYPE_CHECKING:
    from mlcloud.specs import Deployment, TrainingJob
    from providers.local.endpoints import LocalEndpoints


class LocalProvider(Provider):
    type = "local"
    capabilities = frozenset(
        {
            Capability.MULTI_NODE,
            Capability.ELASTIC,
            Capability.SPOT,  # accepted: a local run is simply never interrupted by a market
            Capability.GPU,
            Capability.CHECKPOINT,
            Capability.RESTARTS,
            Capability.LOGS,
            Capability.ENDPOINTS,
        }
    )

    @cached_property
    def _endpoints(self) -> LocalEndpoints:
        from providers.local.endpoints import LocalEndpoints

        return LocalEndpoints(self)

    # ---- jobs --------------------------------------------------------------------------------
    def plan_job(self, job: TrainingJob) -> Plan:
        from providers.local import jobs

        self.check_job(job)
        return jobs.plan_job(self, job)

    def submit_job(self, plan: Plan) -> JobRecord:
        from providers.local import jobs

        return jobs.submit_job(self, plan)

    def job_status(self, job_id: str) -> JobRecord:
        from providers.local import jobs

        return jobs.job_status(self, job_id)

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        from providers.local import jobs

        return jobs.job_logs(self, job_id, follow)

    def cancel_job(self, job_id: str) -> JobRecord:
        from providers.local import jobs

        return jobs.cancel_job(self, job_id)

    # ---- endpoints ---------------------------------------------------------------------------
    def plan_deploy(self, deployment: Deployment) -> Plan:
        return self._endpoints.plan_deploy(deployment)

    def deploy(self, plan: Plan) -> EndpointRecord:
        record = self._endpoints.deploy(plan)
        # Lineage, as the cloud providers record it: endpoint ← model version ← job.
        spec = plan.spec
        self.store.add_model_version(
            spec.name,
            record.model or spec.model,  # type: ignore[union-attr]
            sha256=record.model_sha256,
            source_job=record.source_job,
            details={"endpoint": record.name, "provider": self.name},
        )
        return record

    def endpoint_status(self, name: str) -> EndpointRecord:
        return self._endpoints.endpoint_status(name)

    def predict(self, name: str, payload: Any) -> Any:
        return self._endpoints.predict(name, payload)

    def undeploy(self, name: str) -> EndpointRecord | None:
        return self._endpoints.undeploy(name)

    def list_endpoints(self) -> list[EndpointRecord]:
        return self._endpoints.list_endpoints()
