"""AzureMLProvider: thin hooks over ``jobs.py``, ``logs.py`` and ``endpoints.py``.

Importing this module loads no Azure SDK: each hook imports its module when called, and the
MLClient is built on first use (``clients``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from mlcloud import registry
from mlcloud.provider import Capability, CapturedRecords, Provider, StoredObject
from providers.azureml import errors
from providers.azureml.settings import AzureMLSettings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.transport import HttpTransport

    from mlcloud.config import Profile
    from mlcloud.records import EndpointRecord, JobRecord, ModelVersionRecord, Plan
    from mlcloud.specs import Deployment, TrainingJob
    from mlcloud.store import Store
    from providers.azureml.clients import AzureClients
    from providers.azureml.datastore import Datastores


class AzureMLProvider(Provider[AzureMLSettings]):
    type = "azureml"
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
    refusal_hints = {
        Capability.ELASTIC: "Azure ML command jobs run a fixed instance_count: use nodes: N "
        "(max_restarts re-submits the job after a failure)",
    }
    settings_model = AzureMLSettings
    # Annotated again: mypy reads a callable ClassVar as a method and would bind its first
    # argument; the base class calls it unbound, through the class.
    translate_error = staticmethod(errors.translate)
    poll_interval: float = 5.0  # seconds between refreshes while following logs

    def __init__(
        self,
        profile: Profile,
        store: Store,
        *,
        credential: TokenCredential | None = None,
        transport: HttpTransport[Any, Any] | None = None,
    ) -> None:
        # Also when built directly rather than through the registry (tests, scripts).
        registry.require_installed(registry.BUILTIN[self.type])
        super().__init__(profile, store)
        self._credential = credential
        self._transport = transport

    @cached_property
    def clients(self) -> AzureClients:
        """The provider's one MLClient (``clients.ml``), built on first use."""
        from providers.azureml.clients import AzureClients

        return AzureClients(self.settings, self._credential, self._transport)

    @cached_property
    def datastores(self) -> Datastores:
        """The workspace's datastores as blob containers (``azureml://`` URIs), each resolved
        once for a while."""
        from providers.azureml.datastore import Datastores

        return Datastores(self)

    def other_workspace(self, subscription: str, group: str, workspace: str) -> AzureClients:
        """Clients of another workspace with this profile's credential (a long-form URI)."""
        from providers.azureml.clients import AzureClients

        update = {"subscription_id": subscription, "resource_group": group, "workspace": workspace}
        settings = self.settings.model_copy(update=update)
        return AzureClients(settings, self._credential, self._transport)

    # ---- jobs ------------------------------------------------------------------------------
    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        from providers.azureml.job_plan import plan_job

        return plan_job(self, job)

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        from providers.azureml import jobs

        return jobs.submit(self, plan)

    def _job_status(self, record: JobRecord) -> JobRecord:
        from providers.azureml import jobs

        return jobs.status(self, record)

    def _advance_job(self, record: JobRecord) -> JobRecord:
        from providers.azureml import jobs

        return jobs.advance(self, record)

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        from providers.azureml.logs import job_logs

        return job_logs(self, record, follow)

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        from providers.azureml import jobs

        return jobs.cancel(self, record)

    # ---- endpoints -------------------------------------------------------------------------
    def _plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        from providers.azureml.endpoint_plan import plan_deploy

        return plan_deploy(self, deployment)

    def _deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        from providers.azureml import endpoints

        return endpoints.deploy(self, plan)

    def _endpoint_status(self, name: str) -> EndpointRecord:
        from providers.azureml import endpoints

        return endpoints.status(self, name)

    def _read_capture(self, record: EndpointRecord, since: float, until: float) -> CapturedRecords:
        from providers.azureml import capture

        return capture.read(self, record, since, until)

    def _predict(self, name: str, payload: Any) -> Any:
        from providers.azureml import endpoints

        return endpoints.predict(self, name, payload)

    def _undeploy(self, name: str) -> EndpointRecord | None:
        from providers.azureml import endpoints

        return endpoints.undeploy(self, name)

    def _set_traffic(self, record: EndpointRecord, weights: dict[str, int]) -> EndpointRecord:
        from providers.azureml import endpoints

        return endpoints.set_traffic(self, record, weights)

    # ---- native model registry (workspace model versions, aliases as tags) ---------------
    def _plan_register(self, version: ModelVersionRecord) -> Plan[ModelVersionRecord]:
        from providers.azureml import model_registry

        return model_registry.plan_register(self, version)

    def _register(self, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
        from providers.azureml import model_registry

        return model_registry.register(self, plan)

    def _sync_aliases(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        from providers.azureml import model_registry

        return model_registry.sync_aliases(self, version, aliases)

    def _native_drift(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        from providers.azureml import model_registry

        return model_registry.native_drift(self, version, aliases)

    # ---- storage: azureml:// datastore URIs (pipelines, re-deploy checks) -----------------
    def _list_objects(self, uri: str) -> list[StoredObject]:
        return self.datastores.list_objects(uri)

    def _download_object(self, uri: str, path: str, out: BinaryIO) -> None:
        self.datastores.download(uri, path, out)

    def _read_model_manifest(self, uri: str) -> dict[str, Any] | None:
        from providers.azureml.datastore import model_manifest

        return model_manifest(self, uri)
