"""VertexProvider: jobs in ``jobs.py`` (planned by ``job_plan.py``), endpoints in
``endpoints.py`` (planned by ``endpoint_plan.py``), each hook imported when it is first called."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlcloud.provider import Capability, CapturedRecords, Provider
from providers.vertex import errors
from providers.vertex.settings import VertexSettings

if TYPE_CHECKING:
    from mlcloud.records import EndpointRecord, JobRecord, ModelVersionRecord, Plan
    from mlcloud.specs import Deployment, TrainingJob
    from providers.vertex.clients import Clients
    from providers.vertex.endpoints import Prediction


class VertexProvider(Provider[VertexSettings]):
    type = "vertex"
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
    refusal_hints = {
        Capability.ELASTIC: "Vertex worker pools have a fixed replica count: use nodes: N "
        "(max_restarts restarts the whole job after a worker failure)",
    }
    settings_model = VertexSettings
    translate_error = staticmethod(errors.translate)

    @cached_property
    def clients(self) -> Clients:
        from providers.vertex.clients import Clients

        return Clients(self.settings)

    # ---- jobs --------------------------------------------------------------------------------
    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        from providers.vertex import job_plan

        return job_plan.plan_job(self, job)

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        from providers.vertex import jobs

        return jobs.submit(self, plan)

    def _job_status(self, record: JobRecord) -> JobRecord:
        from providers.vertex import jobs

        return jobs.status(self, record)

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        from providers.vertex import jobs

        return jobs.logs(self, record, follow)

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        from providers.vertex import jobs

        return jobs.cancel(self, record)

    # ---- endpoints ---------------------------------------------------------------------------
    def _plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        from providers.vertex import endpoint_plan

        return endpoint_plan.plan_deploy(self, deployment)

    def _deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        from providers.vertex import endpoints

        return endpoints.deploy(self, plan)

    def _endpoint_status(self, name: str) -> EndpointRecord:
        from providers.vertex import endpoints

        return endpoints.status(self, name)

    def _read_capture(self, record: EndpointRecord, since: float, until: float) -> CapturedRecords:
        from providers.vertex import capture

        return capture.read(self, record, since, until)

    def _predict(self, name: str, payload: Any) -> Prediction:
        from providers.vertex import endpoints

        return endpoints.predict(self, name, payload)

    def _undeploy(self, name: str) -> EndpointRecord | None:
        from providers.vertex import endpoints

        return endpoints.undeploy(self, name)

    def _set_traffic(self, record: EndpointRecord, weights: dict[str, int]) -> EndpointRecord:
        from providers.vertex import endpoints

        return endpoints.set_traffic(self, record, weights)

    def _read_model_manifest(self, uri: str) -> dict[str, Any] | None:
        from providers.vertex import gcs

        return gcs.read_model_manifest(self, uri)

    # ---- native model registry (Vertex AI Model Registry versions and version aliases) ------
    def _plan_register(self, version: ModelVersionRecord) -> Plan[ModelVersionRecord]:
        from providers.vertex import registry_plan

        return registry_plan.plan_register(self, version)

    def _register(self, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
        from providers.vertex import model_registry

        return model_registry.register(self, plan)

    def _sync_aliases(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        from providers.vertex import model_registry

        return model_registry.sync_aliases(self, version, aliases)

    def _native_drift(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        from providers.vertex import model_registry

        return model_registry.native_drift(self, version, aliases)
