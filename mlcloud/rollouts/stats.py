"""Where a rollout reads the canary's numbers.

* Inside ``mlcloud server``: the gateway's per-version metrics, which see every prediction made
  through the server whatever the provider. The server registers them at startup with
  :func:`use_server_metrics` (this package sits below the server and cannot import it).
* Elsewhere, the provider's own per-version counters, when it has them (``version_stats(name)``
  on the provider: the local front's ``/-/stats``). Those are cumulative since the front
  started, with fixed latency buckets, so a step's sample is the difference from the
  snapshot taken when the step began (``baseline``) — percentiles included.
* In a process the server started (a pipeline's runner: ``HANDOFF_ENV`` is set by
  ``mlcloud server``), a rollout is handed to the server: its adopter thread runs the
  controller, on the gateway's numbers, whatever the provider.
* A cloud provider without the server has no per-version numbers mlcloud can read (SageMaker,
  Vertex and Azure ML publish theirs to their own monitoring services, minutes late): a rollout
  there refuses to start and says to run it inside the server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mlcloud.errors import UnsupportedFeature
from mlcloud.rollouts.gate import Sample


class VersionStats(Protocol):
    """What the server's ``metrics.version_stats(endpoint, version)`` answers."""

    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None


ServerMetrics = Callable[[str, str], VersionStats | None]
#: set (to "1") by ``mlcloud server`` for the processes it starts (pipeline runners)
HANDOFF_ENV = "MLCLOUD_ROLLOUTS_BY_SERVER"
_server_metrics: ServerMetrics | None = None


def use_server_metrics(source: ServerMetrics | None) -> None:
    """Judge canaries on ``source`` (the server's gateway metrics); ``None``: the providers'."""
    global _server_metrics
    _server_metrics = source


def server_metrics_in_use() -> bool:
    return _server_metrics is not None


def handed_to_server() -> bool:
    """This process was started by ``mlcloud server`` and is not the server: the rollouts it
    starts are run by the server's controller (see ``rollouts.start_adopter``)."""
    return _server_metrics is None and os.environ.get(HANDOFF_ENV) == "1"


def check_source(provider: Any) -> str:
    """Which source a rollout on ``provider`` reads; ``UnsupportedFeature`` if none."""
    if _server_metrics is not None or handed_to_server():
        return "server gateway metrics"
    if callable(getattr(provider, "version_stats", None)):
        return "the endpoint's own per-version counters"
    raise UnsupportedFeature(
        "canary rollouts outside mlcloud server",
        provider.where,
        hint="this provider's per-version numbers reach mlcloud only through the server's "
        "gateway: run the rollout there (MLCLOUD_SERVER=…)",
    )


def snapshot(provider: Any, endpoint: str, version: str) -> dict[str, Any] | None:
    """The cumulative counters of ``version`` now (a step's baseline, a check's mark); ``None``
    when the source is windowed (the server's) and needs none."""
    if _server_metrics is not None:
        return None
    raw = provider.version_stats(endpoint)
    counters = (raw.get("versions") or {}).get(version) or {}
    # An attempt that reached no server of the version (it is down) is one of its failures,
    # though the front retried it elsewhere and the caller never saw it (as the gateway counts).
    unreachable = int(counters.get("unreachable") or 0)
    return {
        "epoch": raw.get("epoch"),
        "at": time.time(),
        "requests": int(counters.get("requests") or 0) + unreachable,
        "errors": int(counters.get("errors") or 0) + unreachable,
        "buckets": [int(n) for n in counters.get("buckets") or []],
        "bounds_ms": [float(b) for b in raw.get("bounds_ms") or []],
    }


def between(now: dict[str, Any], base: dict[str, Any] | None) -> Sample:
    """What ``now`` counted since ``base`` (all of it when ``base`` is another front's)."""
    earlier = base or {}
    if earlier.get("epoch") != now.get("epoch") or now["requests"] < int(
        earlier.get("requests") or 0
    ):
        earlier = {}  # the front restarted: its counters began again, all within this step
    buckets = list(now["buckets"])
    before = [int(n) for n in earlier.get("buckets") or []]
    if len(before) == len(buckets):
        buckets = [a - b for a, b in zip(buckets, before, strict=True)]
    bounds = now.get("bounds_ms") or []
    return Sample(
        now["requests"] - int(earlier.get("requests") or 0),
        now["errors"] - int(earlier.get("errors") or 0),
        percentile(buckets, bounds, 0.5),
        percentile(buckets, bounds, 0.99),
    )


def recent(now: dict[str, Any], marks: list[dict[str, Any]], least: int) -> Sample | None:
    """The shortest recent window (since one of the last checks' ``marks``) holding at least
    ``least`` requests: a canary that turns bad late in a long step is judged on what it does
    now, not diluted by all it did well before."""
    for mark in reversed(marks):
        window = between(now, mark)
        if window.requests >= least and mark.get("epoch") == now.get("epoch"):
            return window
    return None


def sample(provider: Any, endpoint: str, version: str, baseline: dict[str, Any] | None) -> Sample:
    """The canary's numbers since ``baseline`` (or over the server's recent window)."""
    if _server_metrics is not None:
        got = _server_metrics(endpoint, version)
        if got is None:
            return Sample(0, 0, None, None)
        return Sample(int(got.requests), int(got.errors), got.p50_ms, got.p99_ms)
    now = snapshot(provider, endpoint, version)
    assert now is not None
    return between(now, baseline)


def percentile(buckets: Sequence[int], bounds: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of a histogram as its bucket's upper bound (the last bucket, beyond
    every bound, reads as the last bound)."""
    total = sum(buckets)
    if total <= 0 or not bounds:
        return None
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if n and seen >= q * total:
            return float(bounds[min(i, len(bounds) - 1)])
    return float(bounds[-1])
