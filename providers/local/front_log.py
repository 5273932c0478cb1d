"""The front's log: rate-limited and rotated, so no client can fill the disk through it.

Measured before this existed: 600 slow connections against a front with 256 descriptors made
asyncio log ``socket.accept() out of system resource`` with a traceback in a tight loop, 734 MB
of ``front.log`` in 90 s. Two bounds now:

* **Rate limit** (``RateLimit``): at most ``burst`` records per ``window`` seconds for each
  (logger, level, message template); the next record that passes after a window with drops
  says how many were dropped. Templates are fixed strings in code, so the table stays small.
* **Rotation** (``RotatingLog``): ``front.log`` is rolled over at ``max_bytes`` with
  ``backups`` old files kept. The process's stdout and stderr (where the deployer pointed them,
  and where an uncaught traceback goes) are re-pointed at the new file on every rollover, so
  nothing keeps writing into a rotated file.

Server logs (``bentoml serve`` writes them through its stdout) are rotated by the front's
watchdog with :func:`copy_truncate` (their writers open them ``O_APPEND``).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 2
BURST = 20
WINDOW = 60.0
_MAX_KEYS = 1000  # a safety net: templates are finite, but never let the table grow unbounded


class RateLimit(logging.Filter):
    """At most ``burst`` records per key per ``window`` seconds; counts what it drops."""

    def __init__(
        self,
        burst: int = BURST,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [start, passed, dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            if len(self._seen) >= _MAX_KEYS:
                self._seen.clear()
            dropped = int(entry[2]) if entry else 0
            self._seen[key] = [now, 1, 0]
            if dropped:
                record.msg = (
                    f"[{dropped} similar message(s) dropped by the rate limit] {record.msg}"
                )
            return True
        if entry[1] < self.burst:
            entry[1] += 1
            return True
        entry[2] += 1
        return False


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A size-rotated log file that the process's stdout and stderr follow."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._follow()

    def doRollover(self) -> None:
        super().doRollover()
        self._follow()

    def _follow(self) -> None:
        if self.stream is None:
            return
        self.stream.flush()
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(self.stream.fileno(), fd)


def setup(
    log_file: Path | None,
    max_bytes: int = MAX_BYTES,
    backups: int = BACKUPS,
    prefix: str = "front",
) -> None:
    """Log INFO and up, rate-limited, to ``log_file`` (rotated) or to stderr."""
    handler: logging.Handler
    handler = RotatingLog(log_file, max_bytes, backups) if log_file else logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{prefix}] %(levelname)s %(message)s"))
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def copy_truncate(path: Path, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> bool:
    """Rotate a log another process appends to (``O_APPEND``): copy it to ``.1`` (shifting
    older copies), then truncate it in place. Lines written between the copy and the truncate
    are lost; that is the price of not signalling the writer. True if it rotated."""
    try:
        if path.stat().st_size < max_bytes:
            return False
        for n in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
    except OSError:
        return False
    return True
