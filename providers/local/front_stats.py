"""The front's per-upstream counters, served at ``GET /-/stats``.

Per upstream: requests answered, errors (5xx answered), unreachable attempts (nothing came
back; the request was retried elsewhere), and a latency histogram on fixed log-spaced bounds
(``BOUNDS_MS``). Counters are cumulative since the front started (``started`` and ``pid`` say
which front): a reader judging a window, like the rollout controller, subtracts two snapshots,
which works for percentiles too because the buckets are fixed. Recording is a few integer
increments and one ``bisect`` per request.

Predictions the server's gateway sends straight to the servers (``direct_route.py``) are counted
by the gateway in files of ``GATEWAY_STATS_DIR``, one per gateway process; ``GatewayCounts``
adds them in, counted from when this front started like its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from providers.local import procs

#: bucket upper bounds in ms: 0.05 ms * 1.25^k, up to ~5 min (a percentile is read as the
#: upper bound of its bucket, so within 25%)
BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 1.25**k, 4) for k in range(72))
#: under the endpoint's state directory: the gateway processes' counters, ``<pid>.json``
GATEWAY_STATS_DIR = "gateway-stats"


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

    def add(self, other: Counter, sign: int = 1) -> None:
        self.requests += sign * other.requests
        self.errors += sign * other.errors
        self.unreachable += sign * other.unreachable
        self.buckets = [a + sign * b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "unreachable": self.unreachable, "buckets": self.buckets}  # fmt: skip

    @classmethod
    def of(cls, data: dict[str, Any]) -> Counter:
        counter = cls()
        counter.requests = int(data.get("requests") or 0)
        counter.errors = int(data.get("errors") or 0)
        counter.unreachable = int(data.get("unreachable") or 0)
        buckets = [int(n) for n in data.get("buckets") or []]
        if len(buckets) == len(counter.buckets):
            counter.buckets = buckets
        return counter


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

    def snapshot(
        self,
        versions: dict[str, list[str]],
        weights: dict[str, int],
        more: dict[str, Counter] | None = None,
    ) -> dict[str, Any]:
        """What ``/-/stats`` answers: each serving version with its weight, totals, p50/p99
        and buckets, and each of its upstreams' counts (``more``: counted elsewhere, added)."""
        out: dict[str, Any] = {}
        for version, urls in versions.items():
            total = Counter()
            per_url = {}
            for url in urls:
                c = Counter()
                for part in (self.by_url.get(url), (more or {}).get(url)):
                    if part is not None:
                        c.add(part)
                total.add(c)
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


class GatewayCounts:
    """The gateway processes' counters for this endpoint (``direct_route.py`` writes them),
    each counted from when this front started: what a file held then is subtracted, as the
    front's own counters start at zero (a reader judging a window relies on it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.base: dict[str, tuple[str, dict[str, Counter]]] = {}
        for path in self._files():
            read = _read(path)
            if read is None:
                continue
            who, counters, ident = read
            if not procs.alive(ident):  # a gateway gone before this front: nothing to add
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            self.base[path.name] = who, counters

    def counters(self) -> dict[str, Counter]:
        """Per upstream URL: what the gateways counted since this front started."""
        out: dict[str, Counter] = {}
        for path in self._files():
            read = _read(path)
            if read is None:
                continue
            who, now, _ = read
            base_who, base = self.base.get(path.name, ("", {}))
            for url, counter in now.items():
                total = out.setdefault(url, Counter())
                total.add(counter)
                if base_who == who and url in base:  # the same gateway process as at start
                    total.add(base[url], -1)
        return out

    def _files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob("*.json"))
        except OSError:
            return []


def _read(path: Path) -> tuple[str, dict[str, Counter], procs.ProcessId] | None:
    """``(which process run, counters per URL, its process)`` of one gateway's file; ``None``
    if unreadable."""
    try:
        data = json.loads(path.read_text())
        who = f"{data['pid']}:{data['started']}"
        ident: procs.ProcessId = {"pid": int(data["pid"]), "create_time": data.get("create_time")}
        counters = {str(u): Counter.of(c) for u, c in (data.get("by_url") or {}).items()}
        return who, counters, ident
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
