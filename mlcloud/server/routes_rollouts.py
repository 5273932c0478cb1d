"""``/v1/rollouts``: canary rollouts started, listed, shown and aborted through the server.

The controller of a rollout started here runs inside the server, as a thread
(:func:`mlcloud.rollouts.spawn` sees the gateway's metrics registered), so it judges the canary
on what the gateway saw; a server restart resumes it (``gateway._resume_rollouts``), the
server's adopter (``rollouts.start_adopter``) takes any rollout without a live controller (one a
pipeline runner started, one whose controller died), and a look at a rollout whose controller
is gone (``GET /v1/rollouts/{id}``) restarts it here too.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mlcloud import rollouts
from mlcloud.server.auth import Identity, require
from mlcloud.server.routes_models import acting

router = APIRouter(prefix="/v1/rollouts", tags=["rollouts"])
Reader = Annotated[Identity, Depends(require("read"))]
Admin = Annotated[Identity, Depends(require("admin"))]


class StartRequest(BaseModel):
    """What ``mlcloud rollouts start`` / ``deploy --canary`` sends (``rollouts.start``'s
    arguments; the model is a model dir or URI as the server sees it, a job id or a ref)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    name: str
    provider: str | None = None
    canary: int = 10
    bake_s: float = 600.0
    gate: str = "error_rate<1%,p99_ms<200"
    steps: list[int] | None = None
    min_requests: int = Field(rollouts.MIN_REQUESTS, ge=1)
    trust_code: bool = False
    force: bool = False


@router.post("", status_code=201)
async def start(body: StartRequest, request: Request, who: Admin) -> dict[str, Any]:
    """Deploy ``model`` as a canary of endpoint ``name``; the server's controller decides."""
    request.state.audit_target = body.name

    def begin() -> rollouts.Rollout:
        return rollouts.start(
            body.model, body.name, body.provider, body.canary, body.bake_s, body.gate,
            body.steps, min_requests=body.min_requests, trust_code=body.trust_code,
            force=body.force,
        )  # fmt: skip

    return (await acting(who, begin)).to_dict()


@router.get("")
async def list_rollouts(_: Reader, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Every rollout (of ``endpoint``), newest first."""
    return [r.to_dict() for r in await run_in_threadpool(rollouts.list_rollouts, endpoint)]


@router.get("/{rollout_id}")
async def show(rollout_id: str, _: Reader, heal: bool = True) -> dict[str, Any]:
    """One rollout with its decisions; ``heal``: restart its controller here if it died."""
    return (await run_in_threadpool(lambda: rollouts.get(rollout_id, heal=heal))).to_dict()


@router.post("/{rollout_id}:abort")
async def abort(rollout_id: str, request: Request, who: Admin) -> dict[str, Any]:
    """Roll the canary back now (the token's name is recorded as who aborted it)."""
    request.state.audit_target = rollout_id
    row = await acting(who, lambda: rollouts.abort(rollout_id, who=who.name))
    return row.to_dict()
