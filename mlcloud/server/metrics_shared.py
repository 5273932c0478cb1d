"""The gateway's series across the server's worker processes (``mlcloud server --workers N``).

Each uvicorn worker is a process with its own :class:`~mlcloud.server.metrics.Metrics`, and a
caller's connection lands on any of them: alone, ``/metrics`` showed one worker's share (each
scrape another's) and a rollout was judged on about 1/N of the canary's predictions. Now every
worker writes what it counted to ``<dir>/<pid>.json`` once a second (``SHARE_EVERY``) and when
it stops, and answers ``/metrics`` and the rollout controller's ``version_stats`` with its own
live numbers plus the other workers' files: the whole server's, at most a second late.

What a file holds: the Prometheus samples of the worker's registry (read through the client
library's public ``collect()``; counters and histogram buckets add up across workers, the
``_created`` stamps are left out) and its sliding windows' slots of the last ``SHARE_WINDOW_S``
seconds (sparse latency bins). A worker that died keeps its file, so the server's counters
never go backwards. ``mlcloud server`` makes the directory (``SHARE_ENV``) when it starts more
than one worker and removes it when it stops; with one worker nothing is written.

Why not prometheus_client's own multiprocess mode: it is switched on for the whole process by an
environment variable read at import, so every other registry in a worker (the drift report's
gauges) would be exported by the gateway's ``/metrics`` too, and it has nothing for the sliding
windows the rollouts read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from mlcloud.server.metrics import Metrics

SHARE_ENV = "MLCLOUD_SERVER_METRICS_DIR"
SHARE_EVERY = 1.0
SHARE_WINDOW_S = 120  # twice the window a rollout check reads (60 s)
log = logging.getLogger("mlcloud.server")

Sample = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and sorted labels


def directory_from_env() -> Path | None:
    raw = os.environ.get(SHARE_ENV)
    return Path(raw) if raw else None


def state(metrics: Metrics) -> dict[str, Any]:
    """What this worker writes: its families' samples and its windows' recent slots."""
    families = {}
    for family in metrics.registry.collect():
        samples = [[s.name, s.labels, s.value] for s in family.samples
                   if not s.name.endswith("_created")]  # fmt: skip
        families[family.name] = {"type": family.type, "doc": family.documentation,
                                 "samples": samples}  # fmt: skip
    return {"pid": os.getpid(), "families": families,
            "windows": metrics.recent_slots(SHARE_WINDOW_S)}  # fmt: skip


def write(metrics: Metrics, directory: Path) -> None:
    path = directory / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(state(metrics)))
        os.replace(tmp, path)
    except OSError as exc:  # the directory went away (the server is stopping)
        log.debug("metrics not shared: %s", exc)


def others(directory: Path) -> list[dict[str, Any]]:
    """The other workers' last written states (unreadable ones left out)."""
    found = []
    me = f"{os.getpid()}.json"
    with contextlib.suppress(OSError):
        for path in sorted(directory.glob("*.json")):
            if path.name == me:
                continue
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
    return found


class Sharing:
    """Writes this worker's state every ``SHARE_EVERY`` s (a daemon thread) until stopped."""

    def __init__(self, metrics: Metrics, directory: Path) -> None:
        self.metrics, self.directory = metrics, directory
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-share", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SHARE_EVERY):
            write(self.metrics, self.directory)

    def stop(self) -> None:
        """Stop, after writing the last numbers."""
        self._stop.set()
        self._thread.join(5)
        write(self.metrics, self.directory)


class Merged(Collector):
    """``/metrics`` of the whole server: this worker's families with every other worker's
    samples added."""

    def __init__(self, metrics: Metrics, directory: Path) -> None:
        self.metrics, self.directory = metrics, directory

    def collect(self) -> Iterator[Metric]:
        mine = state(self.metrics)["families"]
        families: dict[str, dict[str, Any]] = {}
        totals: dict[str, dict[Sample, float]] = {}
        for worker in [{"families": mine}, *others(self.directory)]:
            for name, family in (worker.get("families") or {}).items():
                families.setdefault(name, family)
                into = totals.setdefault(name, {})
                for sample_name, labels, value in family.get("samples") or []:
                    key = (str(sample_name), tuple(sorted(dict(labels).items())))
                    into[key] = into.get(key, 0.0) + float(value)
        for name, family in families.items():
            metric = Metric(name, str(family.get("doc") or ""), str(family.get("type")))
            for (sample_name, labels), value in totals[name].items():
                metric.add_sample(sample_name, dict(labels), value)
            yield metric
