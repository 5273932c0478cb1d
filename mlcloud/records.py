"""What providers return and the store keeps: plans, job and endpoint records, their states.

Standard library only at import time (the job supervisor imports the store, which imports this),
so a provider module, the store and the interface all share these without importing each other.
"""

from __future__ import annotations

import builtins
import enum
import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from mlcloud.specs import Deployment, TrainingJob

SpecT = TypeVar("SpecT", bound="TrainingJob | Deployment | ModelVersionRecord")
ContextT = TypeVar("ContextT")
# "register": a model version's entry in the provider's native model registry
PlanKind = Literal["job", "deploy", "register"]


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
class Plan(Generic[SpecT]):
    """The result of ``plan_job`` / ``plan_deploy`` / ``plan_register``: printable, and all
    ``submit`` / ``deploy`` / ``register`` need.

    ``context`` is the provider's own frozen dataclass of facts computed while planning (the
    staged archive, upload lists, ports) so submitting does not recompute them; it is not
    printed. Read it with :meth:`context_as`, which checks its type. ``volatile`` lists the
    values that legitimately differ between two plans of one spec (ports picked for it); the
    plan id is always one.
    """

    provider: str  # the profile name
    type: str  # the provider type
    kind: PlanKind
    id: str  # the mlcloud job id / endpoint name this plan creates
    spec: SpecT
    steps: tuple[PlanStep, ...]
    context: object = None
    volatile: tuple[str, ...] = ()

    def context_as(self, cls: builtins.type[ContextT]) -> ContextT:
        """The provider context, typed; a plan from elsewhere fails loudly, not with a KeyError."""
        if not isinstance(self.context, cls):
            raise TypeError(f"plan {self.id} carries {type(self.context).__name__}, not {cls}")
        return self.context

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "type": self.type,
            "steps": [{"call": s.call, "request": jsonable(s.request)} for s in self.steps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (what the far end receives once serialized)."""
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


def new_job_id(name: str) -> str:
    """A short, unique, human-typable job id: ``<name>-<6 hex>``."""
    return f"{name}-{secrets.token_hex(3)}"


# ---- model registry (DESIGN.md "The MLOps loop") -------------------------------------------------
@dataclass
class ModelVersionRecord:
    """One registered version of a named model: what the registry keeps and providers mirror.

    ``provider`` is the profile the model lives on (its native registry, if any, is kept in step);
    ``details`` holds the lineage and facts: ``manifest`` (file → sha256), ``library_versions``,
    ``signature``, ``metrics``, ``params``, ``data`` (input name → {uri, digest}), ``native``
    (the native registry's ids, e.g. ``{"model_package_arn": …}``)."""

    name: str
    version: int
    uri: str  # model dir path or URI
    sha256: str | None = None  # digest of the model dir's manifest (modeldir.manifest_digest)
    framework: str | None = None
    source_job: str | None = None
    provider: str | None = None  # profile name
    created_by: str | None = None
    created_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AliasMove:
    """One entry of a model's append-only alias history (``from_version`` None: alias created,
    ``to_version`` None: alias removed)."""

    seq: int
    name: str
    alias: str
    from_version: int | None
    to_version: int | None
    at: float
    by: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
