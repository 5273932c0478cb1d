"""The provider interface: portable specs in, native requests out.

Like TorchX's scheduler API, submission is split in two: ``plan_job`` turns a ``TrainingJob``
into a :class:`Plan` holding the exact native request(s) with no side effects (this is what
``--dry-run`` prints), and ``submit_job`` sends that plan. Endpoints follow the same pattern
with ``plan_deploy`` / ``deploy``.

A feature a provider cannot honour raises ``UnsupportedFeature`` from ``plan_*`` (use
:meth:`Provider.require`), never silently dropped. Providers are synchronous; long waits belong
in the provider (with tenacity), not in callers.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mlcloud.errors import UnsupportedFeature

if TYPE_CHECKING:
    from mlcloud.config import Profile
    from mlcloud.specs import Deployment, TrainingJob
    from mlcloud.store import Store


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


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EndpointState(enum.StrEnum):
    CREATING = "CREATING"
    UPDATING = "UPDATING"
    READY = "READY"
    FAILED = "FAILED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class PlanStep:
    """One native call: ``call`` is ``"<Service>.<Operation>"``, ``request`` what is sent."""

    call: str
    request: Mapping[str, Any]


@dataclass(frozen=True)
class Plan:
    """The result of ``plan_job`` / ``plan_deploy``: printable, and all ``submit``/``deploy`` need.

    ``context`` carries provider-private facts computed while planning (e.g. the staged source
    archive's hash and path) so submitting does not recompute them; it is not printed.
    """

    provider: str  # the profile name
    type: str  # the provider type
    kind: str  # "job" or "deploy"
    id: str  # the mlcloud job id / endpoint name this plan creates
    spec: TrainingJob | Deployment
    steps: tuple[PlanStep, ...]
    context: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "type": self.type,
            "steps": [{"call": s.call, "request": _jsonable(s.request)} for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@dataclass
class JobRecord:
    """What the store and every provider call return about one job."""

    id: str
    name: str
    provider: str  # profile name
    type: str  # provider type
    state: JobState
    native_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    exit_code: int | None = None
    message: str | None = None
    attempts: int = 0
    outputs: dict[str, str] = field(default_factory=dict)  # model_dir, output_dir, logs, ...
    details: dict[str, Any] = field(default_factory=dict)  # provider-private (pids, ARNs, ...)
    spec: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data


@dataclass
class EndpointRecord:
    name: str
    provider: str
    type: str
    state: EndpointState
    url: str | None = None
    model: str | None = None  # model dir / URI actually served
    model_sha256: str | None = None
    source_job: str | None = None
    native_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = str(self.state)
        return data


class Provider(ABC):
    """Base class of every backend. Subclasses set ``type``, ``capabilities``, ``install``."""

    type: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    install: ClassVar[str | None] = None  # pip line shown when the extra is missing

    def __init__(self, profile: Profile, store: Store) -> None:
        self.profile = profile
        self.store = store

    @property
    def name(self) -> str:
        return self.profile.name

    # ---- helpers for subclasses -------------------------------------------------------------
    @property
    def where(self) -> str:
        """How errors name this provider: ``"sagemaker (profile 'aws')"``."""
        return f"{self.type} (profile {self.name!r})"

    def require(self, capability: Capability, feature: str, hint: str | None = None) -> None:
        """Raise UnsupportedFeature unless this provider has ``capability``."""
        if capability not in self.capabilities:
            raise UnsupportedFeature(feature, self.where, hint)

    def check_job(self, job: TrainingJob) -> None:
        """The capability checks every provider shares; call first in ``plan_job``."""
        if job.max_nodes > 1:
            self.require(Capability.MULTI_NODE, f"nodes={job.max_nodes}", "use nodes: 1")
        if job.elastic:
            self.require(Capability.ELASTIC, "elastic nodes {min, max}", "use a fixed nodes count")
        if job.spot:
            self.require(Capability.SPOT, "spot: true", "set spot: false")
        if job.resources.accelerator_count:
            self.require(Capability.GPU, "accelerators", "remove resources.accelerators")
        if job.max_restarts:
            self.require(Capability.RESTARTS, "max_restarts", "set max_restarts: 0")

    # ---- jobs ------------------------------------------------------------------------------
    @abstractmethod
    def plan_job(self, job: TrainingJob) -> Plan:
        """Pure: the exact native request(s) for ``job``. No network writes, no store writes."""

    @abstractmethod
    def submit_job(self, plan: Plan) -> JobRecord:
        """Send a plan made by this provider; records the job in the store and returns it."""

    @abstractmethod
    def job_status(self, job_id: str) -> JobRecord:
        """Refresh and return the job (and update the store)."""

    @abstractmethod
    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        """Yield log lines; with ``follow`` keep yielding until the job ends."""

    @abstractmethod
    def cancel_job(self, job_id: str) -> JobRecord:
        """Stop the job. Idempotent: cancelling a finished job returns it unchanged."""

    def list_jobs(self) -> list[JobRecord]:
        return self.store.list_jobs(provider=self.name)

    # ---- endpoints (providers without them keep these defaults) --------------------------
    def plan_deploy(self, deployment: Deployment) -> Plan:
        self.require(Capability.ENDPOINTS, "endpoints")
        raise NotImplementedError

    def deploy(self, plan: Plan) -> EndpointRecord:
        self.require(Capability.ENDPOINTS, "endpoints")
        raise NotImplementedError

    def endpoint_status(self, name: str) -> EndpointRecord:
        self.require(Capability.ENDPOINTS, "endpoints")
        raise NotImplementedError

    def predict(self, name: str, payload: Any) -> Any:
        self.require(Capability.ENDPOINTS, "endpoints")
        raise NotImplementedError

    def undeploy(self, name: str) -> EndpointRecord | None:
        self.require(Capability.ENDPOINTS, "endpoints")
        raise NotImplementedError

    def list_endpoints(self) -> list[EndpointRecord]:
        return self.store.list_endpoints(provider=self.name)


def new_job_id(name: str) -> str:
    """A short, unique, human-typable job id: ``<name>-<6 hex>``."""
    import secrets

    return f"{name}-{secrets.token_hex(3)}"
