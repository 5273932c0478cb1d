"""Capture of sampled requests and predictions, off the request path (issue 13, monitoring).

A request thread only draws the sample and puts one record on a bounded queue
(``put_nowait``: a full queue drops the record and counts it, it never waits). One background
thread per server process drains the queue into JSON Lines files under the capture directory,
rotated by size and age, and keeps the directory under ``max_mb`` by deleting the oldest files.

Format, measured (tests/benchmarks/capture_bench.py --format; 100,000 iris records, this
machine): JSON Lines 4.0 µs CPU per record; Parquet with the records as JSON strings in columns
7.4 µs; Parquet with typed columns 1.3 µs, but that needs a schema known in advance (instances
may be rows, named-feature dicts, strings or tensors) and importing pyarrow costs each server
worker ~0.3 s and ~50 MB. A Parquet file is unreadable until closed (its footer), while each
flushed JSON line is readable at once and survives a killed worker. So: JSON Lines, read back
in bulk by ``mlcloud.monitor.capture`` (pyarrow's JSON reader when installed).

One record per request: ``{"ts", "request_id", "version", "instances", "predictions"}``.
Files: ``capture-<start ms>-<pid>-<seq>.jsonl``; ``stats-<pid>.json`` holds the counts
(``written``, ``dropped``) of the process. Environment (set by the provider from the
deployment's ``capture``): ``MLCLOUD_CAPTURE_DIR`` (capture is on when set),
``MLCLOUD_CAPTURE_SAMPLE`` (0..1, default 1), ``MLCLOUD_CAPTURE_MAX_MB`` (default 512),
``MLCLOUD_CAPTURE_QUEUE`` (records, default 10000), ``MLCLOUD_CAPTURE_ROTATE_MB`` (default 1/8
of max_mb, at most 64), ``MLCLOUD_CAPTURE_ROTATE_S`` (default 300).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("mlcloud.serving.capture")

ENV_DIR = "MLCLOUD_CAPTURE_DIR"
ENV_SAMPLE = "MLCLOUD_CAPTURE_SAMPLE"
ENV_MAX_MB = "MLCLOUD_CAPTURE_MAX_MB"
ENV_QUEUE = "MLCLOUD_CAPTURE_QUEUE"
ENV_ROTATE_MB = "MLCLOUD_CAPTURE_ROTATE_MB"
ENV_ROTATE_S = "MLCLOUD_CAPTURE_ROTATE_S"
PREFIX = "capture-"
SUFFIX = ".jsonl"
_MB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    directory: Path
    sample: float = 1.0
    max_bytes: int = 512 * _MB
    queue_size: int = 10_000
    rotate_bytes: int = 64 * _MB
    rotate_s: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings | None:
        """The settings in ``env``, or None when capture is off (no ``MLCLOUD_CAPTURE_DIR``)."""
        directory = env.get(ENV_DIR)
        if not directory:
            return None
        sample = _number(env, ENV_SAMPLE, 1.0)
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"{ENV_SAMPLE}={sample} must be between 0 and 1")
        max_mb = _number(env, ENV_MAX_MB, 512.0)
        rotate_mb = _number(env, ENV_ROTATE_MB, min(64.0, max_mb / 8))
        return cls(
            directory=Path(directory),
            sample=sample,
            max_bytes=max(1, int(max_mb * _MB)),
            queue_size=max(1, int(_number(env, ENV_QUEUE, 10_000))),
            rotate_bytes=max(1, int(rotate_mb * _MB)),
            rotate_s=_number(env, ENV_ROTATE_S, 300.0),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a number") from None


class Capture:
    """The queue and its writer thread; ``offer`` is all a request does."""

    def __init__(self, settings: Settings, version: str = "") -> None:
        self.settings = settings
        self.version = version
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(settings.queue_size)
        self._random = random.random
        self._file: Any = None
        self._path: Path | None = None
        self._opened = 0.0
        self._seq = 0
        self._reported = (-1, -1)
        settings.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="mlcloud-capture", daemon=True)
        self._thread.start()

    def offer(self, request_id: str, instances: Any, predictions: Any) -> None:
        """Sample, then queue the record; a full queue drops it (counted), never waits."""
        if self.settings.sample < 1.0 and self._random() >= self.settings.sample:
            return
        record = {
            "ts": time.time(),
            "request_id": request_id,
            "version": self.version,
            "instances": instances,
            "predictions": predictions,
        }
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1  # requests run on the event loop: one thread counts here

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued and stop the writer (at process exit)."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    # ---- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._report()
                continue
            batch = [first]
            while len(batch) < 1024:  # what is queued now: one write, one flush
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(r is None for r in batch)
            try:
                self._write([r for r in batch if r is not None])
            except (OSError, TypeError, ValueError):
                self.dropped += len(batch)
                logger.exception("capture: %d records lost", len(batch))
            self._report()
            if stop:
                if self._file is not None:
                    self._file.close()
                return

    def _write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        lines = []
        for record in records:
            try:
                lines.append(json.dumps(record, separators=(",", ":"), default=_plain))
            except (TypeError, ValueError):
                self.dropped += 1  # a prediction JSON cannot hold: not the writer's end
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        if self._rotate_due(len(data)):
            self._rotate()
        self._file.write(data)
        self._file.flush()  # readers see whole lines as soon as the queue is drained
        self.written += len(lines)

    def _rotate_due(self, incoming: int) -> bool:
        if self._file is None:
            return True
        size = self._file.tell()
        aged = time.time() - self._opened >= self.settings.rotate_s
        return size > 0 and (size + incoming > self.settings.rotate_bytes or aged)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        self._opened = time.time()
        self._seq += 1
        name = f"{PREFIX}{int(self._opened * 1000):013d}-{os.getpid()}-{self._seq:06d}{SUFFIX}"
        self._path = self.settings.directory / name
        self._file = self._path.open("ab")
        self._enforce_cap()

    def _enforce_cap(self) -> None:
        """Delete the oldest capture files (any process's) while the directory holds more than
        ``max_bytes``; the file being written is never deleted."""
        files = []
        for path in self.settings.directory.glob(f"{PREFIX}*{SUFFIX}"):
            try:
                files.append((path.name, path, path.stat().st_size))
            except FileNotFoundError:
                continue  # another worker deleted it
        files.sort()  # names start with the opening time
        total = sum(size for _, _, size in files)
        for _, path, size in files:
            if total <= self.settings.max_bytes - self.settings.rotate_bytes or path == self._path:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _report(self) -> None:
        counts = (self.written, self.dropped)
        if counts == self._reported:
            return
        self._reported = counts
        path = self.settings.directory / f"stats-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"written": counts[0], "dropped": counts[1]}))
            tmp.replace(path)
        except OSError:
            logger.warning("capture: cannot write %s", path)


def _plain(value: Any) -> Any:
    """numpy scalars and arrays in a custom predictor's answer."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot capture a {type(value).__name__}")


def from_env(env: Mapping[str, str], version: str = "") -> Capture | None:
    """The process's capture, or None when off."""
    settings = Settings.from_env(env)
    return Capture(settings, version) if settings is not None else None
