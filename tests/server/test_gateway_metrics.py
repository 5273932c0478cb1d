"""The gateway's per-version series: the sliding window the rollout controller reads, its
percentiles against exact ones, bounded memory, and the Prometheus exposition."""

from __future__ import annotations

import random

import pytest

from mlcloud.server import metrics as gateway_metrics
from mlcloud.server.metrics import Metrics, VersionStats


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_window_slides_and_counts_errors_per_version() -> None:
    clock = Clock()
    m = Metrics(window_max_s=60, clock=clock)
    for i in range(100):
        m.observe("iris", "v1", 200, 0.010)
        m.observe(
            "iris",
            "v2",
            502 if i % 10 == 0 else 200,
            0.020,
            "UpstreamError" if i % 10 == 0 else None,
        )
    m.observe("iris", "v2", 400, 0.001)  # the caller's 4xx: a request, not an error
    v1 = m.version_stats("iris", "v1", 30)
    assert (v1.requests, v1.errors, v1.error_rate) == (100, 0, 0.0)
    v2 = m.version_stats("iris", "v2", 30)
    assert (v2.requests, v2.errors) == (101, 10)
    assert v2.error_rate == pytest.approx(10 / 101)
    clock.now += 20
    m.observe("iris", "v2", 200, 0.020)
    assert m.version_stats("iris", "v2", 10).requests == 1  # only the last 10 s
    assert m.version_stats("iris", "v2", 30).requests == 102
    clock.now += 25
    assert m.version_stats("iris", "v2", 30).requests == 1  # the first second slid out
    assert m.version_stats("iris", "v3") == VersionStats(0, 0, 0.0, None, None)
    assert m.versions("iris") == ["v1", "v2"]


def test_percentiles_within_a_bin_of_the_truth() -> None:
    clock = Clock()
    m = Metrics(clock=clock)
    rng = random.Random(7)
    samples = [rng.lognormvariate(2.5, 0.8) for _ in range(5000)]  # milliseconds
    for i, ms in enumerate(samples):
        clock.now = 1_000_000.0 + i // 100  # 50 seconds of traffic
        m.observe("ep", "v", 200, ms / 1000)
    stats = m.version_stats("ep", "v", 120)
    ordered = sorted(samples)
    assert stats.requests == 5000
    assert stats.p50_ms == pytest.approx(ordered[2499], rel=0.08)
    assert stats.p99_ms == pytest.approx(ordered[4949], rel=0.08)


def test_memory_is_bounded_by_the_ring() -> None:
    clock = Clock()
    m = Metrics(window_max_s=30, clock=clock)
    for second in range(1000):
        clock.now = 1_000_000.0 + second
        m.observe("ep", "v", 200, 0.005)
    window = m._windows[("ep", "v")]
    assert len(window.slots) == 30
    assert m.version_stats("ep", "v", 3600).requests == 30  # clipped to the ring


def test_prometheus_exposition_and_the_module_view() -> None:
    m = Metrics()
    m.observe("iris", "v1", 200, 0.004)
    m.observe("iris", "v1", 504, 3.0, "UpstreamTimeout")
    text = m.exposition().decode()
    assert 'mlcloud_predict_requests_total{code="504",endpoint="iris",version="v1"} 1.0' in text
    assert (
        'mlcloud_predict_errors_total{endpoint="iris",kind="UpstreamTimeout",version="v1"} 1.0'
        in text
    )
    assert 'mlcloud_predict_latency_seconds_count{endpoint="iris",version="v1"} 2.0' in text
    before = gateway_metrics.current()
    try:
        gateway_metrics.install(m)
        assert gateway_metrics.version_stats("iris", "v1").errors == 1
    finally:
        gateway_metrics.install(before)
