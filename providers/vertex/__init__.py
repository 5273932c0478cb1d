"""Vertex AI: TrainingJobs as CustomJobs, Deployments as endpoints, through ``aiplatform_v1``.

Importing this package is cheap: the Google SDKs are imported inside the modules that call them
(``google.cloud.aiplatform_v1`` alone costs over a second), and planning builds proto-JSON
without them, so ``mlcloud train --dry-run`` never loads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlcloud.config import profile_settings
from mlcloud.provider import Capability, EndpointRecord, JobRecord, Plan, Provider
from providers.vertex.settings import VertexSettings

if TYPE_CHECKING:
    from mlcloud.specs import Deployment, TrainingJob
    from providers.vertex.clients import Clients


class VertexProvider(Provider):
    type = "vertex"
    install = 'pip install "mlcloud[gcp]"'
    capabilities = frozenset(
        {
            Capability.MULTI_NODE,
            Capability.SPOT,
            Capability.GPU,
            Capability.CHECKPOINT,
            Capability.RESTARTS,
            Capability.LOGS,
            Capability.ENDPOINTS,
            Capability.AUTOSCALING,
            Capability.TRAFFIC_SPLIT,
            Capability.REGISTRY,
        }
    )

    @cached_property
    def settings(self) -> VertexSettings:
        return profile_settings(VertexSettings, self.profile)

    @cached_property
    def clients(self) -> Clients:
        from providers.vertex.clients import Clients

        return Clients(self.settings)

    # ---- jobs --------------------------------------------------------------------------------
    def plan_job(self, job: TrainingJob) -> Plan:
        from providers.vertex import plan

        self.settings  # noqa: B018 - a bad profile is a ConfigError before anything else
        if not job.elastic:
            self.check_job(job)
        return plan.plan_job(self, job)

    def submit_job(self, plan: Plan) -> JobRecord:
        from providers.vertex import jobs

        return jobs.submit_job(self, plan)

    def job_status(self, job_id: str) -> JobRecord:
        from providers.vertex import jobs

        return jobs.job_status(self, job_id)

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        from providers.vertex import jobs

        return jobs.job_logs(self, job_id, follow)

    def cancel_job(self, job_id: str) -> JobRecord:
        from providers.vertex import jobs

        return jobs.cancel_job(self, job_id)

    # ---- endpoints ---------------------------------------------------------------------------
    def plan_deploy(self, deployment: Deployment) -> Plan:
        from providers.vertex import endpoints

        return endpoints.plan_deploy(self, deployment)

    def deploy(self, plan: Plan) -> EndpointRecord:
        from providers.vertex import endpoints

        return endpoints.deploy(self, plan)

    def endpoint_status(self, name: str) -> EndpointRecord:
        from providers.vertex import endpoints

        return endpoints.endpoint_status(self, name)

    def predict(self, name: str, payload: Any) -> Any:
        from providers.vertex import endpoints

        return endpoints.predict(self, name, payload)

    def undeploy(self, name: str) -> EndpointRecord | None:
        from providers.vertex import endpoints

        return endpoints.undeploy(self, name)


__all__ = ["VertexProvider"]
