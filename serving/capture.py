"""Capture of sampled requests and predictions, off the request path (issue 13, monitoring).

A request only draws the sample and appends one record to a bounded in-memory queue (a deque:
no lock, no wake-up; a full queue drops the record and counts it, it never waits). One
background thread per server process drains the queue every ``flush_s`` into JSON Lines files
under the capture directory, rotated by size and age, and keeps the directory under ``max_mb``
by deleting the oldest files. The request serialises its record (~4 us) and queues that one
string: queued dicts and lists survive into the garbage collector's older generations (the
server freezes its heap at start-up so that full collections stay cheap) and cost ~100 us of
server CPU per request in the benchmark; a str is not tracked by the collector at all.
``queue.Queue`` was tried first: its put wakes the writer on every request (GIL hand-offs).

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
of max_mb, at most 64), ``MLCLOUD_CAPTURE_ROTATE_S`` (default 300), ``MLCLOUD_CAPTURE_FLUSH_S``
(default 0.2: how stale the files may be).
"""

from __future__ import annotations

import collections
import json
import logging
import os
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
ENV_FLUSH_S = "MLCLOUD_CAPTURE_FLUSH_S"
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
    flush_s: float = 0.2

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
            flush_s=max(0.01, _number(env, ENV_FLUSH_S, 0.2)),
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
        self._queue: collections.deque[str] = collections.deque()
        self._stop = threading.Event()
        self._random = random.random
        # one encoder: json.dumps with options builds a new one per call (~2 us)
        self._encode = json.JSONEncoder(separators=(",", ":"), default=_plain).encode
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
        if len(self._queue) >= self.settings.queue_size:
            self.dropped += 1  # requests run on the event loop: one thread counts here
            return
        record = {
            "ts": time.time(),
            "request_id": request_id,
            "version": self.version,
            "instances": instances,
            "predictions": predictions,
        }
        try:  # queued as one str, which the garbage collector does not track (docstring)
            line = self._encode(record)
        except (TypeError, ValueError):
            self.dropped += 1  # a prediction JSON cannot hold
            return
        self._queue.append(line)  # atomic under the GIL; the writer pops the other end

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer (at process exit)."""
        self._stop.set()
        self._thread.join(timeout)

    # ---- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.settings.flush_s):
            self._drain()
        self._drain()
        if self._file is not None:
            self._file.close()

    def _drain(self) -> None:
        """Write what is queued now, in one write and one flush."""
        count = len(self._queue)
        if count:
            batch = [self._queue.popleft() for _ in range(count)]
            try:
                self._write(batch)
            except (OSError, TypeError, ValueError):
                self.dropped += len(batch)
                logger.exception("capture: %d records lost", len(batch))
        self._report()

    def _write(self, lines: list[str]) -> None:
        """Append whole lines, rotating so that a file stays under ``rotate_bytes`` (a single
        larger line gets a file of its own)."""
        data = ("\n".join(lines) + "\n").encode() if lines else b""
        while data:
            if self._rotate_due(len(data)):
                self._rotate()
            room = self.settings.rotate_bytes - self._file.tell()
            cut = len(data) if len(data) <= room else data.rfind(b"\n", 0, room) + 1
            if cut <= 0:  # not even one line fits the rest of this file
                cut = data.find(b"\n") + 1 if self._file.tell() == 0 else 0
            if cut == 0:
                self._rotate()
                continue
            self._file.write(data[:cut])
            data = data[cut:]
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
