"""LocalProvider: jobs as supervised subprocesses, endpoints as ``bentoml serve`` behind a front.

Thin: planning is in ``job_plan.py`` / ``endpoint_plan.py`` (pure), the side effects in
``jobs.py`` / ``endpoints.py``, imported inside each hook so that importing the provider stays
cheap (the job supervisor and workers import modules of this package too).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlcloud.provider import Capability, CapturedRecords, DirectRoute, Provider
from mlcloud.records import EndpointRecord, JobRecord, Plan
from providers.local import errors
from providers.local.settings import LocalSettings

if TYPE_CHECKING:
    from mlcloud.specs import Deployment, TrainingJob
    from providers.local.clients import LocalClients


class LocalProvider(Provider[LocalSettings]):
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
            Capability.TRAFFIC_SPLIT,  # the front's weights between model versions
        }
    )
    settings_model = LocalSettings
    translate_error = staticmethod(errors.translate)
    status_is_local = True  # a lock and a pid on this machine (jobs.owner_alive)

    @cached_property
    def clients(self) -> LocalClients:
        from providers.local.clients import LocalClients

        return LocalClients()

    # ---- jobs --------------------------------------------------------------------------------
    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        from providers.local import job_plan

        return job_plan.plan_job(self, job)

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        from providers.local import jobs

        return jobs.submit(self, plan)

    def _job_status(self, record: JobRecord) -> JobRecord:
        from providers.local import jobs

        return jobs.status(self, record)

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        from providers.local import jobs

        return jobs.logs(self, record, follow)

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        from providers.local import jobs

        return jobs.cancel(self, record)

    # ---- endpoints ---------------------------------------------------------------------------
    def _plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        from providers.local import endpoint_plan

        return endpoint_plan.plan_deploy(self, deployment)

    def _deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        from providers.local import endpoints

        record = endpoints.deploy(self, plan)
        # Lineage, as the cloud providers record it: endpoint ← model version ← job.
        self.store.add_model_version(
            plan.spec.name,
            record.model or plan.spec.model,
            sha256=record.model_sha256,
            source_job=record.source_job,
            details={"endpoint": record.name, "provider": self.name},
        )
        return record

    def _endpoint_status(self, name: str) -> EndpointRecord:
        from providers.local import endpoints

        return endpoints.status(self, name)

    def _predict(self, name: str, payload: Any) -> Any:
        from providers.local import endpoints

        return endpoints.predict(self, name, payload)

    def _undeploy(self, name: str) -> EndpointRecord | None:
        from providers.local import endpoints

        return endpoints.undeploy(self, name)

    def _set_traffic(self, record: EndpointRecord, weights: dict[str, int]) -> EndpointRecord:
        from providers.local import endpoint_traffic

        return endpoint_traffic.set_traffic(self, record, weights)

    def _read_capture(self, record: EndpointRecord, since: float, until: float) -> CapturedRecords:
        from providers.local import capture

        return capture.read(self, record, since, until)

    def direct_route(self, record: EndpointRecord) -> DirectRoute | None:
        """The front's routing in the gateway's process (``direct_route.py``: why)."""
        from providers.local import direct_route
        from providers.local.endpoint_plan import endpoint_dir

        state_dir = endpoint_dir(self.store.home, record.name)
        return direct_route.for_endpoint(state_dir, record.created_at)

    def version_stats(self, name: str) -> dict[str, Any]:
        """The front's per-version counters (what a rollout judges a canary by)."""
        from providers.local import endpoint_traffic

        with self.mapped():
            return endpoint_traffic.version_stats(self, name)

    def list_endpoints(self) -> list[EndpointRecord]:
        """Each with its processes checked: a local endpoint has no backend to ask."""
        return [self.endpoint_status(r.name) for r in self.store.list_endpoints(self.name)]
