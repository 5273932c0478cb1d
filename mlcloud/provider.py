"""The provider interface: portable specs in, native requests out.

Like TorchX's ``Scheduler``, the public methods are template methods written once here, and a
provider fills in the underscored hooks. Submission is split in two: ``plan_job`` turns a
``TrainingJob`` into a :class:`~mlcloud.records.Plan` holding the exact native request(s) with no
side effects (what ``--dry-run`` prints), and ``submit_job`` sends that plan. Endpoints follow
the same pattern with ``plan_deploy`` / ``deploy``.

The rules every provider shares live here, not in each provider:

* a feature the provider cannot honour raises ``UnsupportedFeature`` at plan time (``check_job``,
  then ``require``), never silently dropped;
* a plan made by another provider, profile or for the other kind is refused (``SpecError``);
* cancelling a finished job returns it unchanged; a finished job's record is final;
* reads (``job_status``, ``endpoint_status``, ``job_logs``) never start or stop anything; the one
  state transition a controller drives is ``advance_job`` (e.g. re-submitting a failed attempt);
* every exception from the SDK passes through the provider's one ``translate_error`` mapping
  (``mlcloud.errors.map_exceptions``); unknown ones are re-raised untouched.

Providers are synchronous; waiting belongs to ``providers.common.waiting``.
"""

from __future__ import annotations

import builtins
import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Generic, Protocol, TypeVar, cast

from mlcloud.errors import MlcloudError, Origin, SpecError, UnsupportedFeature, map_exceptions
from mlcloud.records import (
    EndpointRecord,
    JobRecord,
    ModelVersionRecord,
    Plan,
    PlanKind,
    PlanStep,
    SpecT,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mlcloud.config import Profile
    from mlcloud.specs import Deployment, TrainingJob
    from mlcloud.store import Store

SettingsT = TypeVar("SettingsT", bound="BaseModel")
_OBJECTS_HINT = "mlcloud reads s3:// and gs:// itself, azureml:// through an azureml profile"


class Capability(enum.StrEnum):
    MULTI_NODE = "multi_node"
    ELASTIC = "elastic"
    SPOT = "spot"
    GPU = "gpu"
    CHECKPOINT = "checkpoint"
    RESTARTS = "restarts"
    LOGS = "logs"
    ENDPOINTS = "endpoints"
    AUTOSCALING = "autoscaling"
    TRAFFIC_SPLIT = "traffic_split"
    REGISTRY = "registry"


class Provider(ABC, Generic[SettingsT]):
    """Base class of every backend.

    Subclasses set ``type``, ``capabilities``, ``settings_model`` (the profile's pydantic model,
    validated once in ``__init__``), optionally ``translate_error``, and implement the hooks.
    """

    type: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    settings_model: ClassVar[builtins.type[BaseModel] | None] = None
    #: a provider's own hint for a capability it lacks (else the generic one in ``check_job``)
    refusal_hints: ClassVar[Mapping[Capability, str]] = {}
    #: the SDK-exception mapping (``providers/<name>/errors.py``); ``None``: nothing to map
    translate_error: ClassVar[staticmethod[[Exception, Origin], MlcloudError | None] | None] = None
    #: ``job_status`` looks only at this machine (processes, files), never a network: listings
    #: refresh the provider's unfinished jobs with it, so a dead local job is seen at once
    status_is_local: ClassVar[bool] = False

    def __init__(self, profile: Profile, store: Store) -> None:
        from mlcloud.config import profile_settings

        self.profile = profile
        self.store = store
        model = self.settings_model
        # A bad profile is a ConfigError when the provider is made, before anything else.
        self.settings = cast(SettingsT, profile_settings(model, profile) if model else None)

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def origin(self) -> Origin:
        return Origin(self.type, self.name)

    @property
    def where(self) -> str:
        """How messages name this provider: ``"sagemaker (profile 'aws')"``."""
        return f"{self.type} (profile {self.name!r})"

    # ---- helpers for subclasses -------------------------------------------------------------
    def require(self, capability: Capability, feature: str, hint: str | None = None) -> None:
        """Raise UnsupportedFeature unless this provider has ``capability``."""
        if capability not in self.capabilities:
            raise UnsupportedFeature(feature, self.where, hint)

    def check_job(self, job: TrainingJob) -> None:
        """The capability checks every provider shares, run by ``plan_job`` before planning.
        A provider words its own hint through ``refusal_hints``."""
        wanted = (
            (job.max_nodes > 1, Capability.MULTI_NODE, f"nodes={job.max_nodes}", "use nodes: 1"),
            (
                job.elastic,
                Capability.ELASTIC,
                f"elastic nodes {{min: {job.min_nodes}, max: {job.max_nodes}}}",
                f"use a fixed count, e.g. nodes: {job.max_nodes}",
            ),
            (job.spot, Capability.SPOT, "spot: true", "set spot: false"),
            (
                bool(job.resources.accelerator_count),
                Capability.GPU,
                "accelerators",
                "remove resources.accelerators",
            ),
            (bool(job.max_restarts), Capability.RESTARTS, "max_restarts", "set max_restarts: 0"),
        )
        for asked, capability, feature, hint in wanted:
            if asked:
                self.require(capability, feature, self.refusal_hints.get(capability, hint))

    def make_plan(
        self,
        kind: PlanKind,
        plan_id: str,
        spec: SpecT,
        steps: tuple[PlanStep, ...] | list[PlanStep],
        context: object = None,
        volatile: tuple[str, ...] = (),
    ) -> Plan[SpecT]:
        """The one way a provider builds a Plan: owned by this profile and type."""
        return Plan(
            provider=self.name,
            type=self.type,
            kind=kind,
            id=plan_id,
            spec=spec,
            steps=tuple(steps),
            context=context,
            volatile=volatile,
        )

    def mapped(self) -> AbstractContextManager[None]:
        """Translate SDK exceptions raised inside the block with this provider's mapping."""
        translate = type(self).translate_error
        if translate is None:
            return nullcontext()
        return map_exceptions(translate, self.origin)

    def _mapped_iter(self, lines: Iterator[str]) -> Iterator[str]:
        with self.mapped():
            yield from lines

    def _own(self, plan: Plan[Any], kind: PlanKind) -> None:
        if (plan.type, plan.provider, plan.kind) != (self.type, self.name, kind):
            raise SpecError(
                f"plan {plan.id} is a {plan.kind} plan made by {plan.type} "
                f"(profile {plan.provider!r}); this is a {kind} on {self.where}",
                hint="plan it again with this provider",
            )

    # ---- jobs: the template ------------------------------------------------------------------
    def plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        """Pure: the exact native request(s) for ``job``. No network writes, no store writes.
        The MLflow tracking URI (``config.tracking_uri``) becomes MLFLOW_TRACKING_URI in the
        job's env (the job's own env wins): every provider passes it as it passes any env."""
        from mlcloud.config import tracking_uri

        self.check_job(job)
        uri = tracking_uri(self.profile)
        if uri and "MLFLOW_TRACKING_URI" not in job.env:
            job = job.model_copy(update={"env": {**job.env, "MLFLOW_TRACKING_URI": uri}})
        with self.mapped():
            return self._plan_job(job)

    def submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        """Send a plan made by this provider; records the job in the store and returns it."""
        self._own(plan, "job")
        with self.mapped():
            return self._submit_job(plan)

    def job_status(self, job_id: str) -> JobRecord:
        """Refresh and return the job (and update the store). A finished job is final."""
        record = self.store.get_job(job_id)
        if record.state.terminal:
            return record
        with self.mapped():
            return self._job_status(record)

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """Log lines; with ``follow`` keep yielding until the job ends. An unknown job fails
        here, before the first line is asked for."""
        record = self.store.get_job(job_id)
        return self._mapped_iter(self._job_logs(record, follow))

    def cancel_job(self, job_id: str) -> JobRecord:
        """Stop the job. Idempotent: cancelling a finished job returns it unchanged."""
        record = self.job_status(job_id)
        if record.state.terminal:
            return record
        with self.mapped():
            return self._cancel_job(record)

    def advance_job(self, job_id: str) -> JobRecord:
        """Refresh, then take the transition the job is due (e.g. re-submit a failed attempt
        when ``max_restarts`` allows). Waiting loops and the server's controller call this;
        ``job_status`` never does, so a read has no side effects."""
        record = self.job_status(job_id)
        if record.state.terminal:
            return record
        with self.mapped():
            return self._advance_job(record)

    def list_jobs(self) -> list[JobRecord]:
        return self.store.list_jobs(provider=self.name)

    @abstractmethod
    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]: ...

    @abstractmethod
    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord: ...

    @abstractmethod
    def _job_status(self, record: JobRecord) -> JobRecord:
        """Refresh a job that is not finished yet."""

    @abstractmethod
    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]: ...

    @abstractmethod
    def _cancel_job(self, record: JobRecord) -> JobRecord:
        """Cancel a job that is not finished yet."""

    def _advance_job(self, record: JobRecord) -> JobRecord:
        return record  # backends that restart attempts themselves have nothing to do

    # ---- endpoints: the template (providers without them keep the defaults) -----------------
    def plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        """Pure: the exact native request(s) to create or update the endpoint."""
        self.require(Capability.ENDPOINTS, "endpoints")
        with self.mapped():
            return self._plan_deploy(deployment)

    def deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        """Create or update the endpoint (idempotent by name); waits until it serves."""
        self.require(Capability.ENDPOINTS, "endpoints")
        self._own(plan, "deploy")
        with self.mapped():
            return self._deploy(plan)

    def endpoint_status(self, name: str) -> EndpointRecord:
        self.require(Capability.ENDPOINTS, "endpoints")
        with self.mapped():
            return self._endpoint_status(name)

    def predict(self, name: str, payload: Any) -> Any:
        self.require(Capability.ENDPOINTS, "endpoints")
        with self.mapped():
            return self._predict(name, payload)

    def undeploy(self, name: str) -> EndpointRecord | None:
        """Remove the endpoint; ``None`` when there was nothing to remove."""
        self.require(Capability.ENDPOINTS, "endpoints")
        with self.mapped():
            return self._undeploy(name)

    def list_endpoints(self) -> list[EndpointRecord]:
        return self.store.list_endpoints(provider=self.name)

    def _plan_deploy(self, deployment: Deployment) -> Plan[Deployment]:
        raise NotImplementedError

    def _deploy(self, plan: Plan[Deployment]) -> EndpointRecord:
        raise NotImplementedError

    def _endpoint_status(self, name: str) -> EndpointRecord:
        raise NotImplementedError

    def _predict(self, name: str, payload: Any) -> Any:
        raise NotImplementedError

    def _undeploy(self, name: str) -> EndpointRecord | None:
        raise NotImplementedError

    # ---- traffic between an endpoint's model versions (canary rollouts) ---------------------
    # A deploy with ``traffic: {new: W, previous: 100-W}`` leaves two versions serving. Every
    # endpoint record carries ``details["traffic"]`` (version id → percent, the split now in
    # force; one version at 100 after a plain deploy) and ``details["versions"]`` (version id →
    # {"model": uri, "sha256": …}); ``details["newest"]`` is the version id the last deploy
    # made. Version ids are the provider's own names (SageMaker variant, Vertex deployedModelId,
    # Azure ML deployment, local upstream).
    def set_traffic(self, name: str, weights: Mapping[str, int]) -> EndpointRecord:
        """Route endpoint ``name``'s traffic as ``weights`` (version id → percent, adding up
        to 100). A version left out is retired (undeployed); the others serve throughout."""
        self.require(Capability.TRAFFIC_SPLIT, "traffic splits")
        record = self.endpoint_status(name)
        serving = dict(record.details.get("traffic") or {})
        unknown = sorted(set(weights) - set(serving))
        if unknown or sum(weights.values()) != 100 or min(weights.values(), default=0) < 0:
            raise SpecError(
                f"endpoint {name!r}: traffic {dict(weights)} must give percentages adding up "
                f"to 100 to versions it serves ({', '.join(sorted(serving)) or 'none'})"
            )
        with self.mapped():
            return self._set_traffic(record, dict(weights))

    def _set_traffic(self, record: EndpointRecord, weights: dict[str, int]) -> EndpointRecord:
        raise NotImplementedError

    # ---- the cloud's native model registry (providers without one keep the defaults) -------
    # mlcloud's registry is the source of truth; a provider with Capability.REGISTRY mirrors
    # each version into its cloud's registry (the ids ``register`` returns are kept in
    # ``version.details["native"]``) and its aliases onto what that registry has. A native
    # entry changed outside mlcloud is reported by ``native_drift`` and never overwritten:
    # ``sync_aliases`` leaves such an entry as it is and returns the differences it left.
    def plan_register(self, version: ModelVersionRecord) -> Plan[ModelVersionRecord] | None:
        """Pure: the native request(s) that create ``version``'s entry in the cloud's model
        registry; ``None`` when this provider has no native registry (local, ray)."""
        if Capability.REGISTRY not in self.capabilities:
            return None
        with self.mapped():
            return self._plan_register(version)

    def register(self, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
        """Create the native entry a ``plan_register`` plan describes (idempotent: the same
        version again is the same entry); returns the native ids."""
        self.require(Capability.REGISTRY, "a native model registry")
        self._own(plan, "register")
        with self.mapped():
            return self._register(plan)

    def sync_aliases(self, version: ModelVersionRecord, aliases: Sequence[str]) -> list[str]:
        """Make the native entry show ``aliases`` (all of the version's aliases now), after an
        alias move. An entry changed outside mlcloud since its last sync is left untouched:
        the differences left are returned (empty: in step)."""
        if Capability.REGISTRY not in self.capabilities or not version.details.get("native"):
            return []
        with self.mapped():
            return self._sync_aliases(version, sorted(set(aliases)))

    def native_drift(self, version: ModelVersionRecord, aliases: Sequence[str]) -> list[str]:
        """Read-only: what the native entry says that mlcloud's record (``version`` with
        ``aliases``) does not, one human-readable line each; empty when in step."""
        if Capability.REGISTRY not in self.capabilities:
            return []
        if not version.details.get("native"):
            return [f"{version.ref} has no native entry in {self.where}"]
        with self.mapped():
            return self._native_drift(version, sorted(set(aliases)))

    def _plan_register(self, version: ModelVersionRecord) -> Plan[ModelVersionRecord]:
        raise NotImplementedError

    def _register(self, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
        raise NotImplementedError

    def _sync_aliases(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        raise NotImplementedError

    def _native_drift(self, version: ModelVersionRecord, aliases: list[str]) -> list[str]:
        raise NotImplementedError

    # ---- reading a model directory where the provider keeps it ------------------------------
    # A re-deploy compares the serving model's inputs with the new model's (``api``'s
    # ``check_same_inputs``): a local model dir is read directly; a cloud URI (s3://, gs://,
    # azureml://) only the provider that stores it can read, with its own credentials.
    def read_model_manifest(self, uri: str) -> dict[str, Any] | None:
        """The ``mlcloud-model.yaml`` of the model at ``uri`` as a dict; ``None`` when this
        provider cannot read that URI (not its storage, or not an mlcloud model)."""
        with self.mapped():
            return self._read_model_manifest(uri)

    def _read_model_manifest(self, uri: str) -> dict[str, Any] | None:
        return None

    # ---- objects in the provider's storage (pipelines: data triggers, artifact copies) ----
    # The core reads bucket URIs (s3://, gs://) with the storage SDKs itself; a URI only the
    # provider can resolve (azureml://: a datastore of a workspace) is read through these.
    def list_objects(self, uri: str) -> list[StoredObject]:
        """The object at ``uri``, or every object under that prefix (a folder), with its
        version: what a data trigger digests and what keys an artifact copy. Nothing there:
        an empty list."""
        with self.mapped():
            return self._list_objects(uri)

    def download_object(self, uri: str, path: str, out: BinaryIO) -> None:
        """Stream the object ``path`` (as ``list_objects(uri)`` named it) into ``out``."""
        with self.mapped():
            self._download_object(uri, path, out)

    def _list_objects(self, uri: str) -> list[StoredObject]:
        raise UnsupportedFeature(f"reading {uri}", self.where, hint=_OBJECTS_HINT)

    def _download_object(self, uri: str, path: str, out: BinaryIO) -> None:
        raise UnsupportedFeature(f"reading {uri}", self.where, hint=_OBJECTS_HINT)

    # ---- captured requests (monitoring: mlcloud.monitor.capture) -------------------------
    # A deployment with ``capture`` records sampled requests: the local serving writes JSON
    # Lines, the clouds their native capture, configured by their deploy plans. ``read_capture``
    # reads them back in one shape: each record ``{"ts": unix seconds, "request_id": str,
    # "version": version id, "instances": [...], "predictions": [...]}`` (one per request).
    def read_capture(self, record: EndpointRecord, since: float, until: float) -> CapturedRecords:
        """The captured requests of endpoint ``record`` with ``since <= ts < until``."""
        if not record.spec.get("capture"):
            raise SpecError(
                f"endpoint {record.name!r} captures no requests",
                hint="redeploy it with --capture 0.1 (or capture: {sample: 0.1})",
            )
        with self.mapped():
            return self._read_capture(record, since, until)

    def _read_capture(self, record: EndpointRecord, since: float, until: float) -> CapturedRecords:
        raise UnsupportedFeature(
            "reading captured requests", self.where, hint="capture runs on local and the clouds"
        )

    # ---- the server's gateway (mlcloud.server.gateway) ---------------------------------------
    def direct_route(self, record: EndpointRecord) -> DirectRoute | None:
        """How a gateway on this machine reaches the servers of endpoint ``record`` without
        its own proxy in between (the local front); ``None``: through the endpoint's URL."""
        return None


class DirectRoute(Protocol):
    """An endpoint's routing between its model servers, done by the gateway itself (the
    local provider's ``direct_route.py``): the endpoint's own weights, and its own counts."""

    def route(self) -> tuple[str, str] | None:
        """``(server base URL, version id)`` of the next prediction; ``None``: use the
        endpoint's URL."""

    def answered(self, url: str, status: int, ms: float) -> None:
        """The server at ``url`` answered ``status`` in ``ms`` milliseconds."""

    def unreachable(self, url: str) -> None:
        """The server at ``url`` took no request (nothing came back): left out for a while."""

    def flush(self) -> None:
        """Write out what was counted (the gateway is stopping)."""


@dataclass(frozen=True)
class StoredObject:
    """One object at a storage URI: ``path`` under the URI (``""``: the URI names the object
    itself), ``version`` (its ETag: changes whenever its content does) and ``size`` in bytes."""

    path: str
    version: str
    size: int


@dataclass
class CapturedRecords:
    """What ``read_capture`` found: the records, and how many the capture dropped (a full
    queue in the server; 0 where the platform does not say)."""

    records: list[dict[str, Any]]
    dropped: int = 0
    #: the same records as one pyarrow Table (columns ts, request_id, version, instances,
    #: predictions) when the provider read them in bulk; then ``records`` is empty
    table: Any = None
