"""What travels between the client and the server: records and errors from JSON, plans,
query parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import errors
from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState, PlanStep

if TYPE_CHECKING:
    from mlcloud.store.rollouts import RolloutRow

SERVER_ENV, TOKEN_ENV, TOKEN_FILE_ENV = "MLCLOUD_SERVER", "MLCLOUD_TOKEN", "MLCLOUD_TOKEN_FILE"
SELF = "mlcloud-server"  # the provider_type of errors about the server itself
ROLLOUT_FINAL = ("promoted", "rolled_back", "aborted", "failed")  # mlcloud.store.rollouts.FINAL


# ---- records and errors from JSON --------------------------------------------------------------
def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def job_record(data: Mapping[str, Any]) -> JobRecord:
    return JobRecord(**{**_known(JobRecord, data), "state": JobState(data["state"])})


def endpoint_record(data: Mapping[str, Any]) -> EndpointRecord:
    return EndpointRecord(**{**_known(EndpointRecord, data), "state": EndpointState(data["state"])})


def rollout_row(data: Mapping[str, Any]) -> RolloutRow:
    from mlcloud.store.rollouts import RolloutRow

    rid = int(str(data["id"]).removeprefix("r-"))
    return RolloutRow(**{**_known(RolloutRow, data), "id": rid})


def _rollout_ref(rollout_id: str | int) -> str:
    """``3`` → ``r-3``; anything else as given (the server says what is wrong with it)."""
    return f"r-{rollout_id}" if str(rollout_id).isdigit() else str(rollout_id)


def error_from_problem(body: Mapping[str, Any], status: int) -> errors.MlcloudError:
    """The MlcloudError a problem document describes: its class (or the nearest one this
    mlcloud knows), message, hint and attributes, without running any constructor's logic."""
    cls: type[errors.MlcloudError] = errors.MlcloudError
    for name in body.get("kinds") or [body.get("kind")]:
        found = getattr(errors, str(name), None)
        if isinstance(found, type) and issubclass(found, errors.MlcloudError):
            cls = found
            break
    error = cls.__new__(cls)
    message = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    errors.MlcloudError.__init__(error, message, hint=body.get("hint"))
    if issubclass(cls, errors.ProviderError):
        error.provider_type = str(body.get("provider_type") or SELF)  # type: ignore[attr-defined]
        error.profile = body.get("profile")  # type: ignore[attr-defined]
        error.code = body.get("code")  # type: ignore[attr-defined]
    for name in ("retryable", "feature", "provider", "install", "quota"):
        if name in body:
            setattr(error, name, body[name])
    return error


@dataclass(frozen=True)
class RemotePlan:
    """A plan as the server printed it (``to_dict`` is the same document as a local plan's)."""

    provider: str
    type: str
    steps: tuple[PlanStep, ...]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "type": self.type,
            "steps": [{"call": s.call, "request": s.request} for s in self.steps],
        }

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> RemotePlan:
        plan = answer["plan"]
        steps = tuple(PlanStep(s["call"], s["request"]) for s in plan["steps"])
        return cls(plan["provider"], plan["type"], steps, tuple(answer.get("warnings") or ()))


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _model_ref(model: str) -> str:
    """A model directory given by a relative path is sent as its absolute path."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model
