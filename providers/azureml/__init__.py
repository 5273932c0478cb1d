"""Azure ML: command jobs and managed online endpoints through azure-ai-ml's ``MLClient``.

Nothing heavy is imported here: azure-ai-ml (~1.7 s) is imported inside the methods that
need it, so ``mlcloud --help`` and the other providers never pay for it.

* jobs (``jobs.py``): the job's source, the stdlib launcher and the vendored runtime are
  staged into one directory given to the command job as ``code`` (Azure ML uploads it as a
  content-hashed code asset); ``plan.py`` builds the command job and prints its REST body.
  Azure ML has no retry setting for command jobs, so mlcloud re-submits a failed attempt
  itself, up to ``max_restarts``, when a status refresh finds it failed.
* endpoints (``endpoints.py``): a model asset version, a ManagedOnlineEndpoint and one
  ManagedOnlineDeployment per model version; an update is blue/green.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from mlcloud import registry
from mlcloud.config import profile_settings
from mlcloud.provider import (
    Capability,
    EndpointRecord,
    JobRecord,
    Plan,
    Provider,
)
from providers.azureml.settings import AzureMLSettings

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.transport import HttpTransport

    from mlcloud.config import Profile
    from mlcloud.specs import Deployment, TrainingJob
    from mlcloud.store import Store


class AzureMLProvider(Provider):
    type = "azureml"
    install = "pip install 'mlcloud[azure]'"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.MULTI_NODE,
            Capability.SPOT,
            Capability.GPU,
            Capability.CHECKPOINT,
            Capability.RESTARTS,
            Capability.LOGS,
            Capability.ENDPOINTS,
            Capability.TRAFFIC_SPLIT,
            Capability.REGISTRY,
        }
    )
    poll_interval: float = 5.0  # seconds between refreshes while following logs

    def __init__(
        self,
        profile: Profile,
        store: Store,
        *,
        credential: TokenCredential | None = None,
        transport: HttpTransport[Any, Any] | None = None,
    ) -> None:
        super().__init__(profile, store)
        # Also when built directly rather than through the registry (tests, scripts).
        registry.require_installed(registry.BUILTIN[self.type])
        self.settings = profile_settings(AzureMLSettings, profile)
        self._credential = credential
        self._transport = transport
        self._client: MLClient | None = None

    @property
    def client(self) -> MLClient:
        """The provider's one MLClient, built on first use."""
        if self._client is None:
            from providers.azureml.clients import make_client

            self._client = make_client(self.settings, self._credential, self._transport)
        return self._client

    # ---- jobs ------------------------------------------------------------------------------
    def plan_job(self, job: TrainingJob) -> Plan:
        from providers.azureml.plan import plan_job

        return plan_job(self, job)  # runs check_job after its own, more specific checks

    def submit_job(self, plan: Plan) -> JobRecord:
        from providers.azureml.jobs import submit_job

        return submit_job(self, plan)

    def job_status(self, job_id: str) -> JobRecord:
        from providers.azureml.jobs import job_status

        return job_status(self, job_id)

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        from providers.azureml.logs import job_logs

        return job_logs(self, job_id, follow)

    def cancel_job(self, job_id: str) -> JobRecord:
        from providers.azureml.jobs import cancel_job

        return cancel_job(self, job_id)

    # ---- endpoints -------------------------------------------------------------------------
    def plan_deploy(self, deployment: Deployment) -> Plan:
        from providers.azureml.endpoints import plan_deploy

        return plan_deploy(self, deployment)

    def deploy(self, plan: Plan) -> EndpointRecord:
        from providers.azureml.endpoints import deploy

        return deploy(self, plan)

    def endpoint_status(self, name: str) -> EndpointRecord:
        from providers.azureml.endpoints import endpoint_status

        return endpoint_status(self, name)

    def predict(self, name: str, payload: Any) -> Any:
        from providers.azureml.endpoints import predict

        return predict(self, name, payload)

    def undeploy(self, name: str) -> EndpointRecord | None:
        from providers.azureml.endpoints import undeploy

        return undeploy(self, name)
