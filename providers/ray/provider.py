"""RayProvider: jobs in ``jobs.py`` (planned by ``job_plan.py``), each hook imported when it is
first called; the cluster it talks to is in ``clients.py`` (and ``cluster.py`` for the one
mlcloud starts). Endpoints are Ray Serve applications: ``endpoints.py`` (planned by
``endpoint_plan.py``; the replicas run ``serve_app.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from mlcloud.provider import Capability, Provider
from providers.ray import errors
from providers.ray.settings import RaySettings

if TYPE_CHECKING:
    from typing import Any

    from mlcloud.records import EndpointRecord, JobRecord, Plan
    from mlcloud.specs import Deployment, TrainingJob
    from providers.ray.clients import Clients


class RayProvider(Provider[RaySettings]):
    type = "ray"
    capabilities = frozenset(
        {
            Capability.MULTI_NODE,
            Capability.ELASTIC,
            # accepted: the cluster's nodes are what they are; an interrupted node is a lost
            # node, which an elastic job survives (the job spec's spot means "may be stopped")
            Capability.SPOT,
            Capability.GPU,
            Capability.CHECKPOINT,
            Capability.RESTARTS,
            Capability.LOGS,
            Capability.ENDPOINTS,  # Ray Serve
            Capability.AUTOSCALING,  # replicas {min, max, target} -> Serve's autoscaling_config
        }
    )
    settings_model = RaySettings
    translate_error = staticmethod(errors.translate)

    @cached_property
    def clients(self) -> Clients:
        from providers.ray.clients import Clients

        return Clients(self.settings, self.store.home, self.origin)

    # ---- jobs --------------------------------------------------------------------------------
    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        from providers.ray import job_plan

        return job_plan.plan_job(self, job)

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        from providers.ray import jobs

        return jobs.submit(self, plan)

    def _job_status(self, record: JobRecord) -> JobRecord:
        from providers.ray import jobs

        return jobs.status(self, record)

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        from providers.ray import jobs

        return jobs.logs(self, record, follow)

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        from providers.ray import jobs

        return jobs.cancel(self, record)

    def _advance_job(self, record: JobRecord) -> JobRecord:
        from providers.ray import jobs

        return jobs.advance(self, record)

    # ---- endpoints (Ray Serve) ---------------------------------------------------------------
    def _plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        from providers.ray import endpoint_plan

        return endpoint_plan.plan_deploy(self, deployment)

    def _deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        from providers.ray import endpoints

        return endpoints.deploy(self, plan)

    def _endpoint_status(self, name: str) -> EndpointRecord:
        from providers.ray import endpoints

        return endpoints.status(self, name)

    def _predict(self, name: str, payload: Any) -> Any:
        from providers.ray import endpoints

        return endpoints.predict(self, name, payload)

    def _undeploy(self, name: str) -> EndpointRecord | None:
        from providers.ray import endpoints

        return endpoints.undeploy(self, name)
