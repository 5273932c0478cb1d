"""SageMakerProvider: portable jobs and deployments on Amazon SageMaker through boto3.

The hooks only delegate: planning is ``job_plan.py`` / ``endpoint_plan.py`` (pure), the side
effects ``jobs.py`` / ``endpoints.py``, the SDK clients ``clients.py`` and the one error mapping
``errors.py``. Each module is imported inside its hook, and boto3 on the first AWS call, so
importing this class (``mlcloud train --dry-run``) loads no AWS SDK.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from mlcloud.provider import Capability, CapturedRecords, Provider
from providers.sagemaker import errors
from providers.sagemaker.settings import SageMakerSettings

if TYPE_CHECKING:
    from mlcloud.records import EndpointRecord, JobRecord, ModelVersionRecord, Plan
    from mlcloud.specs import Deployment, TrainingJob
    from providers.sagemaker.clients import Clients


class SageMakerProvider(Provider[SageMakerSettings]):
    """Training jobs (CreateTrainingJob) and real-time endpoints on SageMaker."""

    type: ClassVar[str] = "sagemaker"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
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
    settings_model = SageMakerSettings
    translate_error = staticmethod(errors.translate)

    @cached_property
    def clients(self) -> Clients:
        """One boto3 session and client per service, made on first use (the test seam:
        ``endpoint_url`` in the profile, or AWS_ENDPOINT_URL)."""
        from providers.sagemaker.clients import Clients

        return Clients(self.settings)

    # ---- jobs --------------------------------------------------------------------------------
    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        from providers.sagemaker import job_plan

        return job_plan.plan_job(self, job)

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        from providers.sagemaker import jobs

        return jobs.submit(self, plan)

    def _job_status(self, record: JobRecord) -> JobRecord:
        from providers.sagemaker import jobs

        return jobs.status(self, record)

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        from providers.sagemaker import jobs

        return jobs.logs(self, record, follow)

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        from providers.sagemaker import jobs

        return jobs.cancel(self, record)

    # ---- endpoints ---------------------------------------------------------------------------
    def _plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        from providers.sagemaker import endpoint_plan

        return endpoint_plan.plan_deploy(self, deployment)

    def _deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        from providers.sagemaker import endpoints

        return endpoints.deploy(self, plan)

    def _endpoint_status(self, name: str) -> EndpointRecord:
        from providers.sagemaker import endpoints

        return endpoints.status(self, name)

    def _read_capture(self, record: EndpointRecord, since: float, until: float) -> CapturedRecords:
        from providers.sagemaker import capture

        return capture.read(self, record, since, until)

    def _predict(self, name: str, payload: Any) -> Any:
        from providers.sagemaker import endpoints

        return endpoints.predict(self, name, payload)

    def _undeploy(self, name: str) -> EndpointRecord | None:
        from providers.sagemaker import endpoints

        return endpoints.undeploy(self, name)

    def _set_traffic(self, record: EndpointRecord, weights: dict[str, int]) -> EndpointRecord:
        from providers.sagemaker import endpoints

        return endpoints.set_traffic(self, record, weights)

    def _read_model_manifest(self, uri: str) -> dict[str, Any] | None:
        from providers.sagemaker import s3

        return s3.read_model_manifest(self, uri)

    # ---- native model registry (model package groups) ----------------------------------------
    def _plan_register(self, version: ModelVersionRecord) -> Plan[ModelVersionRecord]:
        from providers.sagemaker import registry_plan

        return registry_plan.plan_register(self, version)

    def _register(self, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
        from providers.sagemaker import model_registry

        return model_registry.register(self, plan)

    def _sync_aliases(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        from providers.sagemaker import model_registry

        return model_registry.sync_aliases(self, version, aliases)

    def _native_drift(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        from providers.sagemaker import model_registry

        return model_registry.native_drift(self, version, aliases)
