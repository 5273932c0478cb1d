"""``/v1/endpoints``: deploy (or dry-run), list, show, undeploy. Predict is the gateway's
(:mod:`mlcloud.server.gateway`)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mlcloud import api
from mlcloud.errors import SpecError
from mlcloud.server.auth import Identity, demand, require
from mlcloud.server.routes_jobs import planned
from mlcloud.server.routes_models import acting

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])
Reader = Annotated[Identity, Depends(require("read"))]
Admin = Annotated[Identity, Depends(require("admin"))]


class DeployRequest(BaseModel):
    """What ``mlcloud deploy`` sends: the model (a model dir or URI as the server sees it, a
    job id, or a registry ref), the endpoint's name and the deploy options."""

    model_config = ConfigDict(extra="forbid")

    model: str
    name: str
    provider: str | None = None
    force: bool = False
    dry_run: bool = False
    options: dict[str, Any] = Field(default_factory=dict)


def _options(options: dict[str, Any], call: Any) -> dict[str, Any]:
    """The options ``call`` takes (api.DeployOptions, plus any keyword the facade gains),
    ``None`` values dropped as the CLI sends them; an unknown one is the caller's SpecError."""
    known = set(api.DeployOptions.__annotations__)
    params = inspect.signature(call).parameters.values()
    known |= {p.name for p in params if p.kind is p.KEYWORD_ONLY} - {"force"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpecError(
            f"unknown deploy option(s): {', '.join(unknown)}",
            hint=f"allowed: {', '.join(sorted(known))}",
        )
    return {k: v for k, v in options.items() if v is not None}


@router.post("", status_code=201)
async def deploy(body: DeployRequest, request: Request, who: Reader) -> Any:
    """Serve ``model`` as endpoint ``name`` (an existing one is updated); ``dry_run`` returns
    the exact native requests and changes nothing (a read token suffices for it)."""
    request.state.audit_target = body.name
    if body.dry_run:
        request.state.audit = False
        options = _options(body.options, api.plan_deploy)
        return await run_in_threadpool(
            planned, lambda: api.plan_deploy(body.model, body.name, body.provider, **options)
        )
    demand(who, "admin")
    options = _options(body.options, api.deploy)
    endpoint = await acting(  # a deploy that follows an alias records notes in its history
        who, lambda: api.deploy(body.model, body.name, body.provider, force=body.force, **options)
    )
    previous = endpoint.previous.to_dict() if endpoint.previous is not None else None
    return {"record": endpoint.record.to_dict(), "previous": previous}


@router.get("")
async def list_endpoints(_: Reader, provider: str | None = None) -> list[dict[str, Any]]:
    return [r.to_dict() for r in await run_in_threadpool(api.list_endpoints, provider)]


@router.get("/{name}")
async def show(name: str, _: Reader, provider: str | None = None) -> dict[str, Any]:
    """The endpoint, refreshed from its provider."""
    return (await run_in_threadpool(lambda: api.endpoint(name, provider).status())).to_dict()


@router.delete("/{name}")
async def undeploy(name: str, _: Admin, provider: str | None = None) -> dict[str, Any]:
    """Remove the endpoint and everything it runs (404 when it does not exist)."""

    def remove() -> dict[str, Any]:
        handle = api.endpoint(name, provider)
        handle.undeploy()
        return {"name": name, "provider": handle.record.provider, "removed": True}

    return await run_in_threadpool(remove)
