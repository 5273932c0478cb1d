"""``/v1/pipelines``: run (or dry-run) a pipeline, its runs, show, logs (server-sent events),
resume, cancel; schedule / unschedule its triggers, the scheduled pipelines, fire one now.

The pipeline file is read and validated on the caller's machine (its job files inlined, its
relative paths made absolute there) and sent as JSON, as ``train`` sends a job file; the runs'
runners and the trigger scheduler run here. Every call goes to :mod:`mlcloud.pipelines`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import chain
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mlcloud import pipelines as pl
from mlcloud.errors import MlcloudError, SpecError
from mlcloud.sensitive import redact
from mlcloud.server import problems
from mlcloud.server.auth import Identity, demand, require
from mlcloud.server.routes_jobs import MAX_SPEC_BYTES, sse

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])
Reader = Annotated[Identity, Depends(require("read"))]
Admin = Annotated[Identity, Depends(require("admin"))]


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(description="where the caller read the pipeline (shown by `scheduled`)")
    pipeline: dict[str, Any] = Field(description="the pipeline as mlcloud.pipelines.load read it")
    provider: str | None = None


class Fire(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = "manual"
    detail: str | None = None


def answer(row: pl.RunRow) -> dict[str, Any]:
    """A run as the CLI prints it: its record and :func:`mlcloud.pipelines.describe`'s
    document (steps in DAG order, with ``needs`` and durations); never its spec (job env)."""
    return {"run": row.to_dict(), "described": pl.describe(row)}


async def _pipeline(request: Request) -> dict[str, Any]:
    """The body: the loaded pipeline (a JSON mapping), bounded like a job spec."""
    raw = await request.body()
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"the pipeline is larger than {MAX_SPEC_BYTES >> 10} KiB")
    try:
        data = json.loads(raw or b"null")
    except ValueError as e:
        raise SpecError(f"the body is not a JSON pipeline: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(
            "the body must be a pipeline (a mapping)", hint="e.g. mlcloud.pipelines.load(FILE)[1]"
        )
    return data


@router.post("/runs", status_code=201)
async def run(
    request: Request,
    who: Reader,
    provider: str | None = None,
    no_cache: bool = False,
    dry_run: bool = False,
) -> Any:
    """Start a run of the pipeline in the body (detached); ``dry_run`` returns every step's
    native plan and runs nothing (needs only a read token)."""
    data = await _pipeline(request)
    if dry_run:
        request.state.audit = False
        plan = await run_in_threadpool(pl.plan, data, provider)
        planned = {k: v for k, v in plan.items() if k != "warnings"}
        return JSONResponse({**redact(planned), "warnings": plan["warnings"]})  # 200: nothing made
    demand(who, "admin")
    row = await run_in_threadpool(lambda: pl.run(data, provider, no_cache=no_cache))
    request.state.audit_target = row.id
    return await run_in_threadpool(answer, row)


@router.get("/runs")
async def runs(
    _: Reader,
    pipeline: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 50,
) -> list[dict[str, Any]]:
    """Runs (of ``pipeline``, or all), newest first."""
    return [r.to_dict() for r in await run_in_threadpool(pl.runs, pipeline, limit)]


@router.get("/runs/{run_id}")
async def show(run_id: str, _: Reader) -> dict[str, Any]:
    """The run and its steps (a run whose runner died says so in its message)."""
    return await run_in_threadpool(lambda: answer(pl.get(run_id)))


@router.post("/runs/{run_id}:resume")
async def resume(run_id: str, _: Admin) -> dict[str, Any]:
    """Run again what did not succeed (409 while its runner is alive)."""
    return await run_in_threadpool(lambda: answer(pl.resume(run_id)))


@router.post("/runs/{run_id}:cancel")
async def cancel(run_id: str, _: Admin) -> dict[str, Any]:
    """Stop the run: no new step starts, running jobs are cancelled (idempotent)."""
    return await run_in_threadpool(lambda: answer(pl.cancel(run_id)))


def _lines(first: list[str], rest: Iterator[str]) -> Iterator[str]:
    """Log lines as ``data`` events, then ``end``, or ``error`` (a problem) mid-stream."""
    try:
        for line in chain(first, rest):
            yield sse(None, line.rstrip("\r\n"))
        yield sse("end", "{}")
    except MlcloudError as e:
        yield sse("error", json.dumps(problems.problem(e)))


@router.get("/runs/{run_id}/logs")
async def logs(run_id: str, _: Reader, step: str | None = None) -> StreamingResponse:
    """The runner's log, or ``step``'s job log, as ``text/event-stream`` (one event a line)."""

    def opened() -> tuple[list[str], Iterator[str]]:
        lines = pl.logs(run_id, step)  # an unknown run or step: a problem before streaming
        return _first(lines), lines

    first, rest = await run_in_threadpool(opened)
    return StreamingResponse(
        _lines(first, rest),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _first(lines: Iterator[str]) -> list[str]:
    return [line for line in [next(lines, None)] if line is not None]


@router.get("/scheduled")
async def scheduled(_: Reader) -> list[dict[str, Any]]:
    """Scheduled pipelines, their triggers' state and last firings."""
    return await run_in_threadpool(pl.scheduled)


@router.post("/scheduled", status_code=201)
async def schedule(body: Schedule, request: Request, _: Admin) -> dict[str, Any]:
    """Register (or re-register) the pipeline's triggers; this server's scheduler fires them."""
    request.state.audit_target = str(body.pipeline.get("name") or "")
    return await run_in_threadpool(pl.schedule, body.file, body.provider, body.pipeline)


@router.delete("/scheduled/{name}")
async def unschedule(name: str, _: Admin) -> dict[str, Any]:
    """Stop firing ``name``'s triggers (``unscheduled``: false when it was not scheduled)."""
    return {"name": name, "unscheduled": await run_in_threadpool(pl.unschedule, name)}


@router.post("/scheduled/{name}:trigger")
async def trigger(name: str, body: Fire, _: Admin) -> dict[str, Any]:
    """Fire ``name`` now (a drift alert's hook); it runs when no run of it is active."""
    firing = await run_in_threadpool(pl.trigger, name, body.reason, body.detail)
    return firing.to_dict()
