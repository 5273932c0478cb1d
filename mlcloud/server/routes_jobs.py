"""``/v1/jobs``: submit (or dry-run), list, show, cancel, logs (server-sent events)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mlcloud import api
from mlcloud.errors import MlcloudError, SpecError
from mlcloud.records import Plan
from mlcloud.sensitive import redact
from mlcloud.server import problems
from mlcloud.server.auth import Identity, demand, require
from mlcloud.specs import TrainingJob, resolve_paths, validate_spec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
T = TypeVar("T")
Reader = Annotated[Identity, Depends(require("read"))]
Admin = Annotated[Identity, Depends(require("admin"))]
MAX_SPEC_BYTES = 1 << 20


def planned(make: Callable[[], Plan[Any]]) -> dict[str, Any]:
    """A dry-run's plan, redacted, with its warnings (settings the profile lacks)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", api.MissingSettingsWarning)
        plan = make()
    notes = [str(w.message) for w in caught if issubclass(w.category, api.MissingSettingsWarning)]
    return {"plan": redact(plan.to_dict()), "warnings": notes}


def _json_or_yaml(text: str) -> Any:
    """JSON (what the client sends) parsed by json, ~50x faster than PyYAML; else YAML."""
    import yaml

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # YAML's flow style also starts with "{"
    return yaml.safe_load(text)


async def _job_spec(request: Request) -> TrainingJob:
    """The body: a job spec as JSON or YAML (relative paths: the server's working directory)."""
    import yaml

    raw = await request.body()
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"the job spec is larger than {MAX_SPEC_BYTES >> 10} KiB")
    try:
        text = raw.decode("utf-8")
        data = _json_or_yaml(text) if text.strip() else None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"the body is not a JSON or YAML job spec: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(
            "the body must be a job spec (a mapping)", hint="e.g. the contents of a job.yaml"
        )
    job = validate_spec(TrainingJob, data, "job spec")
    return resolve_paths(job, Path.cwd())


@router.post("", status_code=201)
async def submit(
    request: Request,
    who: Reader,
    provider: str | None = None,
    dry_run: bool = False,
) -> Any:
    """Submit a job spec (JSON or YAML body); ``dry_run`` returns the exact native request(s)
    and sends nothing (needs only a read token)."""
    job = await _job_spec(request)
    if dry_run:
        request.state.audit = False
        return JSONResponse(await run_in_threadpool(planned, lambda: api.plan(job, provider)))
    demand(who, "admin")
    handle = await run_in_threadpool(api.train, job, provider)
    request.state.audit_target = handle.id
    return handle.record.to_dict()


@router.get("")
async def list_jobs(
    _: Reader, provider: str | None = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 50
) -> list[dict[str, Any]]:
    """Jobs on every provider (or one profile's), newest first."""
    records = await run_in_threadpool(api.list_jobs, provider, limit)
    return [r.to_dict() for r in records]


def _show(job_id: str, advance: bool) -> dict[str, Any]:
    handle = api.job(job_id)
    record = handle.advance() if advance else handle.status()
    return {**record.to_dict(), "events": handle.events()}


@router.get("/{job_id}")
async def show(job_id: str, _: Reader, advance: bool = False) -> dict[str, Any]:
    """The job refreshed, with its state history (``events``); ``advance`` also takes the
    transition it is due (a restart ``max_restarts`` allows), as a waiting loop does."""
    return await run_in_threadpool(_show, job_id, advance)


@router.post("/{job_id}:cancel")
async def cancel(job_id: str, _: Admin) -> dict[str, Any]:
    """Stop the job (idempotent)."""
    return (await run_in_threadpool(lambda: api.job(job_id).cancel())).to_dict()


def sse(event: str | None, data: str) -> str:
    """One server-sent event (a data line per line of ``data``)."""
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {part}\n" for part in data.split("\n")) + "\n"


def _events(handle: api.Job, follow: bool) -> Iterator[str]:
    """Log lines as ``data`` events, then ``end`` (the job's state) or ``error`` (a problem)."""
    try:
        for line in handle.logs(follow=follow):
            yield sse(None, line.rstrip("\r\n"))
        yield sse("end", json.dumps({"state": str(handle.status().state)}))
    except MlcloudError as e:
        yield sse("error", json.dumps(problems.problem(e)))


@router.get("/{job_id}/logs")
async def logs(job_id: str, _: Reader, follow: bool = False) -> StreamingResponse:
    """The job's log as ``text/event-stream``: one event per line; with ``follow`` the stream
    lasts until the job ends (restarts included)."""
    handle = await run_in_threadpool(api.job, job_id)  # an unknown id: 404 before streaming
    return StreamingResponse(
        _events(handle, follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
