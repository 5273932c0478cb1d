"""SageMakerProvider: portable jobs and deployments on Amazon SageMaker through boto3."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from mlcloud.config import profile_settings
from mlcloud.errors import MlcloudError
from mlcloud.provider import (
    Capability,
    EndpointRecord,
    JobRecord,
    Plan,
    PlanStep,
    Provider,
    new_job_id,
)
from providers.sagemaker.errors import map_error, mapped
from providers.sagemaker.settings import SageMakerSettings

if TYPE_CHECKING:
    from mlcloud.config import Profile
    from mlcloud.specs import Deployment, TrainingJob
    from mlcloud.store import Store
    from providers.sagemaker.clients import Clients
    from providers.sagemaker.endpoints import Endpoints
    from providers.sagemaker.jobs import Jobs


class SageMakerProvider(Provider):
    """Training jobs (CreateTrainingJob) and real-time endpoints on SageMaker.

    Nothing heavy is imported with this module: boto3 loads on the first AWS call.
    """

    type: ClassVar[str] = "sagemaker"
    install: ClassVar[str | None] = "pip install 'mlcloud[aws]'"
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
            Capability.REGISTRY,
        }
    )

    def __init__(self, profile: Profile, store: Store) -> None:
        super().__init__(profile, store)
        self.settings = profile_settings(SageMakerSettings, profile)
        self._clients: Clients | None = None
        self._jobs: Jobs | None = None
        self._endpoints: Endpoints | None = None

    @property
    def clients(self) -> Clients:
        if self._clients is None:
            from providers.sagemaker.clients import Clients

            self._clients = Clients(self.settings)
        return self._clients

    @property
    def jobs(self) -> Jobs:
        if self._jobs is None:
            from providers.sagemaker.jobs import Jobs

            self._jobs = Jobs(self)
        return self._jobs

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            from providers.sagemaker.endpoints import Endpoints

            self._endpoints = Endpoints(self)
        return self._endpoints

    # ---- jobs --------------------------------------------------------------------------------
    @mapped
    def plan_job(self, job: TrainingJob) -> Plan:
        from providers.sagemaker.plan import build

        self.check_job(job)
        job_id = new_job_id(job.name)
        request, context = build(job, job_id, self.settings, self.where)
        return Plan(
            provider=self.name,
            type=self.type,
            kind="job",
            id=job_id,
            spec=job,
            steps=(PlanStep("sagemaker.CreateTrainingJob", request),),
            context=context,
        )

    @mapped
    def submit_job(self, plan: Plan) -> JobRecord:
        return self.jobs.submit(plan)

    @mapped
    def job_status(self, job_id: str) -> JobRecord:
        return self.jobs.status(job_id)

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        try:
            yield from self.jobs.logs(job_id, follow)
        except MlcloudError:
            raise
        except Exception as e:
            raise map_error(e) from e

    @mapped
    def cancel_job(self, job_id: str) -> JobRecord:
        return self.jobs.cancel(job_id)

    # ---- endpoints ---------------------------------------------------------------------------
    @mapped
    def plan_deploy(self, deployment: Deployment) -> Plan:
        return self.endpoints.plan(deployment)

    @mapped
    def deploy(self, plan: Plan) -> EndpointRecord:
        return self.endpoints.deploy(plan)

    @mapped
    def endpoint_status(self, name: str) -> EndpointRecord:
        return self.endpoints.status(name)

    @mapped
    def predict(self, name: str, payload: Any) -> Any:
        return self.endpoints.predict(name, payload)

    @mapped
    def undeploy(self, name: str) -> EndpointRecord | None:
        return self.endpoints.undeploy(name)
