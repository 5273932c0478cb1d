"""``/v1/monitor``: drift of an endpoint's captured requests against its model's baseline (one
check, as ``mlcloud monitor`` runs it), and the endpoint's scheduled checks (``history``).

Reads only (role ``read``). The check reads the captures where the server can (its store, its
providers' storage); the caller writes the HTML report and the Prometheus gauges from the
result, so it is sent with every field (NaN kept), and the CLI prints what it prints locally.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from mlcloud.errors import SpecError
from mlcloud.server.auth import Identity, require

router = APIRouter(prefix="/v1/monitor", tags=["monitor"])
Reader = Annotated[Identity, Depends(require("read"))]


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise SpecError(f"{what} {item!r}: expected NAME=VALUE (NAME * for every feature)")
        out[name] = value
    return out


def _check(endpoint: str, window_s: float, baseline: str | None, alpha: float, correction: str,
           thresholds: dict[str, float], methods: dict[str, str],
           provider: str | None) -> str:  # fmt: skip
    from mlcloud.monitor import check, drift

    config = drift.DriftConfig(alpha=alpha, thresholds=thresholds, correction=correction,
                               methods=methods)  # fmt: skip
    result = check.check_endpoint(endpoint, window_s=window_s, baseline=baseline, config=config,
                                  provider=provider)  # fmt: skip
    # every field, NaN included (Python's json reads it back): DriftResult.from_fields
    return json.dumps(asdict(result), default=str)


@router.get("/{endpoint}")
async def check(
    endpoint: str,
    _: Reader,
    window_s: Annotated[float, Query(gt=0)] = 24 * 3600,
    baseline: str | None = None,
    alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    correction: Literal["bh", "bonferroni", "none"] = "bh",
    threshold: Annotated[list[str] | None, Query(description="FEATURE=VALUE")] = None,
    method: Annotated[list[str] | None, Query(description="FEATURE=METHOD")] = None,
    provider: str | None = None,
) -> Response:
    """Drift of ``endpoint``'s captured requests of the last ``window_s`` seconds against its
    serving model's training baseline (or ``baseline``: a registry ref or model dir)."""
    try:
        limits = {k: float(v) for k, v in _pairs(threshold or [], "threshold").items()}
    except ValueError:
        raise SpecError("a threshold must be a number", hint="e.g. threshold=f2=0.1") from None
    body = await run_in_threadpool(_check, endpoint, window_s, baseline, alpha, correction,
                                   limits, _pairs(method or [], "method"), provider)  # fmt: skip
    return Response(body, media_type="application/json")


@router.get("/{endpoint}/history")
async def history(
    endpoint: str, _: Reader, limit: Annotated[int, Query(ge=1, le=10_000)] = 50
) -> list[dict[str, Any]]:
    """The endpoint's scheduled checks (deploy --on-drift), newest first."""
    from mlcloud.monitor import alerts

    return await run_in_threadpool(alerts.history, endpoint, limit)
