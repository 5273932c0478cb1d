"""Per-endpoint, per-version request / error / latency series of the predict gateway.

Two views of the same observations:

* Prometheus series (``/metrics``) in a registry of the app's own (not the process-global
  default, so two apps in one process, e.g. tests, never share counters):
  ``mlcloud_predict_requests_total{endpoint,version,code}``,
  ``mlcloud_predict_errors_total{endpoint,version,kind}`` (upstream failures only: 5xx, timeouts,
  unreachable; a caller's 4xx is not the model's error) and
  ``mlcloud_predict_latency_seconds{endpoint,version}``.
* ``version_stats(endpoint, version, window_s)`` over a recent sliding window, what the rollout
  controller compares against a gate. Memory is bounded: each series keeps a ring of one-second
  slots (``WINDOW_MAX_S`` of them at most), each slot a fixed array of log-scale latency bins, so
  a percentile is exact to one bin (about 7%) whatever the request rate.

With several server workers, both views are the whole server's (:mod:`.metrics_shared`).
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

WINDOW_MAX_S = 900  # the longest window version_stats answers for (older slots are reused)
_BIN_BASE = 1.15  # latency bins grow by 15%: a percentile is within ~7% of the truth
_BIN_MIN_MS = 0.05
_BINS = 1 + math.ceil(math.log(600_000 / _BIN_MIN_MS, _BIN_BASE))  # up to 10 minutes
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass  # not frozen: it satisfies mlcloud.rollouts.stats.VersionStats (plain attributes)
class VersionStats:
    """One version's requests over a window. ``errors`` are upstream failures (5xx, timeouts,
    unreachable); ``error_rate`` is errors / requests (0.0 without requests); the percentiles
    are None without requests."""

    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None


def _bin(ms: float) -> int:
    if ms <= _BIN_MIN_MS:
        return 0
    return min(_BINS - 1, 1 + int(math.log(ms / _BIN_MIN_MS, _BIN_BASE)))


def _bin_ms(index: int) -> float:
    """A bin's representative latency: the geometric middle of its bounds."""
    if index == 0:
        return _BIN_MIN_MS
    return float(_BIN_MIN_MS * _BIN_BASE ** (index - 0.5))


class _Slot:
    __slots__ = ("errors", "latency", "requests", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.requests = 0
        self.errors = 0
        self.latency = array("I", bytes(4 * _BINS))


class _Window:
    """A ring of one-second slots; a slot is reset when its second comes round again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.slots: list[_Slot | None] = [None] * size

    def add(self, second: int, ms: float, error: bool) -> None:
        index = second % self.size
        slot = self.slots[index]
        if slot is None or slot.second != second:
            slot = self.slots[index] = _Slot(second)
        slot.requests += 1
        slot.errors += error
        slot.latency[_bin(ms)] += 1

    def stats(self, now_s: int, window_s: int, more: Sequence[Any] = ()) -> VersionStats:
        """The window's numbers; ``more``: other workers' slots (``recent``'s shape), added."""
        window_s = max(1, min(window_s, self.size))
        requests = errors = 0
        counts = [0] * _BINS
        for slot in self.slots:
            if slot is not None and now_s - window_s < slot.second <= now_s:
                requests += slot.requests
                errors += slot.errors
                for i, n in enumerate(slot.latency):
                    counts[i] += n
        for second, slot_requests, slot_errors, bins in more:
            if now_s - window_s < int(second) <= now_s:
                requests += int(slot_requests)
                errors += int(slot_errors)
                for i, n in bins:
                    if 0 <= int(i) < _BINS:
                        counts[int(i)] += int(n)
        p50 = _percentile(counts, requests, 0.50)
        p99 = _percentile(counts, requests, 0.99)
        rate = errors / requests if requests else 0.0
        return VersionStats(requests, errors, rate, p50, p99)

    def recent(self, now_s: int, window_s: int) -> list[tuple[int, int, int, bytes]]:
        """The slots of the last ``window_s`` seconds, copied: ``(second, requests, errors,
        latency bins as bytes)`` (quick: taken under the metrics' lock)."""
        return [
            (slot.second, slot.requests, slot.errors, slot.latency.tobytes())
            for slot in self.slots
            if slot is not None and now_s - window_s < slot.second <= now_s
        ]


def _percentile(counts: list[int], total: int, q: float) -> float | None:
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return round(_bin_ms(i), 3)
    return round(_bin_ms(_BINS - 1), 3)  # pragma: no cover (counts add up to total)


class _Series:
    """One (endpoint, version)'s bound Prometheus children and its sliding window."""

    __slots__ = ("codes", "latency", "window")

    def __init__(self, latency: Any, window: _Window) -> None:
        self.latency, self.window = latency, window
        self.codes: dict[int, Any] = {}  # status -> its requests counter child


class Metrics:
    """The gateway's series: one per app (``registry`` is what ``/metrics`` exposes)."""

    def __init__(
        self, window_max_s: int = WINDOW_MAX_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.window_max_s = window_max_s
        self._clock = clock
        self.shared: Path | None = None  # the workers' directory (metrics_shared), if several
        self._sharing: Any = None
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        labels = ("endpoint", "version")
        self._requests = Counter(
            "mlcloud_predict_requests",
            "Predict requests through the gateway, by the status answered",
            (*labels, "code"),
            registry=self.registry,
        )
        self._errors = Counter(
            "mlcloud_predict_errors",
            "Predict requests the upstream failed (5xx, timeout, unreachable)",
            (*labels, "kind"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "mlcloud_predict_latency_seconds",
            "Predict latency through the gateway (upstream answer complete)",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(
        self, endpoint: str, version: str, status: int, seconds: float, error: str | None = None
    ) -> None:
        """One answered request. ``error`` names an upstream failure (counted against the
        version); a caller's 4xx has none."""
        series = self._series.get((endpoint, version)) or self._bind(endpoint, version)
        counter = series.codes.get(status)
        if counter is None:
            counter = series.codes[status] = self._requests.labels(endpoint, version, str(status))
        counter.inc()
        if error is not None:
            self._errors.labels(endpoint, version, error).inc()
        series.latency.observe(seconds)
        with self._lock:
            series.window.add(int(self._clock()), seconds * 1000.0, error is not None)

    def _bind(self, endpoint: str, version: str) -> _Series:
        """A new version's series, its label children looked up once (not per request)."""
        with self._lock:
            key = (endpoint, version)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(self.window_max_s)
            series = _Series(self._latency.labels(endpoint, version), window)
            return self._series.setdefault(key, series)

    def version_stats(self, endpoint: str, version: str, window_s: float = 60.0) -> VersionStats:
        """``version``'s requests to ``endpoint`` during the last ``window_s`` seconds (at most
        ``window_max_s``), the other workers' included."""
        more: list[Any] = []
        if self.shared is not None:
            from mlcloud.server import metrics_shared

            key = f"{endpoint}\t{version}"
            for worker in metrics_shared.others(self.shared):
                more += (worker.get("windows") or {}).get(key) or []
        with self._lock:
            window = self._windows.get((endpoint, version))
            if window is None and not more:
                return VersionStats(0, 0, 0.0, None, None)
            window = window or _Window(self.window_max_s)
            return window.stats(int(self._clock()), math.ceil(window_s), more)

    def recent_slots(self, window_s: int) -> dict[str, list[list[Any]]]:
        """Every series' slots of the last ``window_s`` seconds, by ``endpoint<TAB>version``:
        ``[second, requests, errors, [[bin, n], ...]]`` with the bins that have any (what a
        worker shares; copied under the lock, made sparse outside it)."""
        now = int(self._clock())
        with self._lock:
            raw = {f"{e}\t{v}": w.recent(now, window_s) for (e, v), w in self._windows.items()}
        out = {}
        for key, slots in raw.items():
            out[key] = [
                [second, requests, errors,
                 [[i, n] for i, n in enumerate(array("I", latency)) if n]]
                for second, requests, errors, latency in slots
            ]  # fmt: skip
        return out

    def share(self, directory: Path) -> None:
        """Share with the other workers through ``directory`` (see :mod:`.metrics_shared`)."""
        from mlcloud.server import metrics_shared

        self.shared = directory
        self._sharing = metrics_shared.Sharing(self, directory)

    def stop_sharing(self) -> None:
        if self._sharing is not None:
            self._sharing.stop()
            self._sharing = None

    def versions(self, endpoint: str) -> list[str]:
        """The versions of ``endpoint`` seen since the app started."""
        with self._lock:
            return sorted(v for e, v in self._windows if e == endpoint)

    def exposition(self) -> bytes:
        """The Prometheus text of the series (the whole server's, with several workers)."""
        if self.shared is None:
            return generate_latest(self.registry)
        from mlcloud.server import metrics_shared

        merged = CollectorRegistry(auto_describe=False)
        merged.register(metrics_shared.Merged(self, self.shared))
        return generate_latest(merged)


_current = Metrics()


def current() -> Metrics:
    """The series of the app running in this process (the gateway installs its own)."""
    return _current


def install(metrics: Metrics) -> None:
    global _current
    _current = metrics


def version_stats(endpoint: str, version: str, window_s: float = 60.0) -> VersionStats:
    """The rollout controller's view (when it runs inside the server): see ``Metrics``."""
    return _current.version_stats(endpoint, version, window_s)
