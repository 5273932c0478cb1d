"""The front's per-upstream counters, served at ``GET /-/stats``.

Per upstream: requests answered, errors (5xx answered), unreachable attempts (nothing came
back; the request was retried elsewhere), and a latency histogram on fixed log-spaced bounds
(``BOUNDS_MS``). Counters are cumulative since the front started (``started`` and ``pid`` say
which front): a reader judging a window, like the rollout controller, subtracts two snapshots,
which works for percentiles too because the buckets are fixed. Recording is a few integer
increments and one ``bisect`` per request.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

#: bucket upper bounds in ms: 0.05 ms * 1.25^k, up to ~5 min (a percentile is read as the
#: upper bound of its bucket, so within 25%)
BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 1.25**k, 4) for k in range(72))


class Counter:
    __slots__ = ("buckets", "errors", "requests", "unreachable")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.unreachable = 0
        self.buckets = [0] * (len(BOUNDS_MS) + 1)

    def record(self, status: int, ms: float) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        self.buckets[bisect_left(BOUNDS_MS, ms)] += 1


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram, as its bucket's upper bound."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank and n:
            return BOUNDS_MS[i] if i < len(BOUNDS_MS) else float("inf")
    return BOUNDS_MS[-1]


class Stats:
    """Counters per upstream URL, summed per version when read."""

    def __init__(self) -> None:
        self.by_url: dict[str, Counter] = {}
        self.started = time.time()

    def of(self, url: str) -> Counter:
        counter = self.by_url.get(url)
        if counter is None:
            counter = self.by_url[url] = Counter()
        return counter

    def snapshot(self, versions: dict[str, list[str]], weights: dict[str, int]) -> dict[str, Any]:
        """What ``/-/stats`` answers: each serving version with its weight, totals, p50/p99
        and buckets, and each of its upstreams' counts."""
        out: dict[str, Any] = {}
        for version, urls in versions.items():
            total = Counter()
            per_url = {}
            for url in urls:
                c = self.by_url.get(url) or Counter()
                total.requests += c.requests
                total.errors += c.errors
                total.unreachable += c.unreachable
                total.buckets = [a + b for a, b in zip(total.buckets, c.buckets, strict=True)]
                per_url[url] = {"requests": c.requests, "errors": c.errors,
                                "unreachable": c.unreachable}  # fmt: skip
            out[version] = {
                "weight": weights.get(version, 0),
                "requests": total.requests,
                "errors": total.errors,
                "unreachable": total.unreachable,
                "p50_ms": percentile(total.buckets, 0.5),
                "p99_ms": percentile(total.buckets, 0.99),
                "buckets": total.buckets,
                "upstreams": per_url,
            }
        return {"pid": os.getpid(), "started": self.started, "bounds_ms": list(BOUNDS_MS),
                "versions": out}  # fmt: skip
