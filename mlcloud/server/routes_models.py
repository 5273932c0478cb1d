"""``/v1/models``: the model registry (register, list, show with lineage, move an alias, roll
back, alias history, delete a version). Registry changes are recorded as made by the token's
name (``model_registry.acting_as``), not by the server's OS user."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mlcloud import api, model_registry
from mlcloud.server.auth import Identity, require

router = APIRouter(prefix="/v1/models", tags=["models"])
Reader = Annotated[Identity, Depends(require("read"))]
Admin = Annotated[Identity, Depends(require("admin"))]
T = TypeVar("T")


async def acting(who: Identity, call: Callable[[], T]) -> T:
    """Run ``call`` in the threadpool with ``who`` as the registry's actor."""

    def run() -> T:
        with model_registry.acting_as(who.name):
            return call()

    return await run_in_threadpool(run)


class Register(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="a job id, a model dir or URI (as the server sees it), a ref")
    name: str
    alias: str | None = None
    provider: str | None = None
    reason: str | None = None


class AliasMoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int
    reason: str | None = None
    expect: int | None = Field(None, description="only move if the alias points here now")


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = None


@router.get("")
async def list_models(_: Reader) -> list[dict[str, Any]]:
    """One entry per registered model: versions, latest, aliases."""
    return await run_in_threadpool(api.list_models)


@router.post("", status_code=201)
async def register(body: Register, request: Request, who: Admin) -> dict[str, Any]:
    """Register ``source`` as the next version of ``name`` (with ``alias``: point it there)."""
    request.state.audit_target = body.name
    version = await acting(
        who,
        lambda: api.register_model(
            body.source, body.name, alias=body.alias, provider=body.provider, reason=body.reason
        ),
    )
    return version.to_dict()


@router.get("/{ref}")
async def show(ref: str, _: Reader) -> dict[str, Any]:
    """``NAME``: versions and aliases; ``NAME:VERSION`` / ``NAME@ALIAS``: that version with
    its lineage, integrity and native drift."""
    return await run_in_threadpool(api.model, ref)


@router.get("/{name}/history")
async def history(name: str, _: Reader) -> list[dict[str, Any]]:
    """Every alias move of ``name``, oldest first."""
    return [m.to_dict() for m in await run_in_threadpool(api.alias_history, name)]


@router.put("/{name}/aliases/{alias}")
async def move_alias(name: str, alias: str, body: AliasMoveRequest, who: Admin) -> dict[str, Any]:
    """Point ``name@alias`` at ``version``; endpoints following the alias are redeployed."""
    move = await acting(
        who,
        lambda: api.move_alias(name, alias, body.version, reason=body.reason, expect=body.expect),
    )
    return move.to_dict()


@router.post("/{name}/aliases/{alias}:rollback")
async def rollback(name: str, alias: str, body: Reason, who: Admin) -> dict[str, Any]:
    """Move ``name@alias`` back to the version it pointed at before its last move."""
    move = await acting(who, lambda: api.rollback_model(name, alias, reason=body.reason))
    return move.to_dict()


@router.delete("/{name}/versions/{version}")
async def delete_version(name: str, version: int, who: Admin) -> dict[str, Any]:
    """Delete a version (409 while an alias points at it or an endpoint serves it)."""
    await acting(who, lambda: api.delete_model_version(name, version))
    return {"name": name, "version": version, "deleted": True}
