"""``/v1/audit``: the audit log, for admins (``mlcloud tokens audit`` reads the same entries)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from mlcloud.server.auth import Identity, audit_log, require

router = APIRouter(prefix="/v1/audit", tags=["admin"])


@router.get("")
async def audit(
    _: Annotated[Identity, Depends(require("admin"))],
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[dict[str, Any]]:
    """The newest entries first: who (token name), what (method and path), target, when,
    status and outcome of every mutating call."""
    return await run_in_threadpool(audit_log, limit)
