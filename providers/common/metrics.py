"""``metrics.json`` (written in the job by ``runtime.log_metrics`` / ``log_params``), collected
into the job record once, when the job reaches a terminal state, on every provider.

Each provider reads the file from where its jobs put their output (a local folder, S3 inside
SageMaker's ``output.tar.gz``, a GCS object, an Azure blob) through :func:`gather`, which
validates and summarises it, and merges the result into the very update that records the job's
end (so whoever sees the job finished sees its metrics, and a crash cannot lose them):

* ``details["tracking"]`` = ``{"source": URI, "params": {...}, "metrics": {name: {"value",
  "step", "count", "min", "max"}}}`` (``value``/``step``: the last point), or
  ``{"source", "error"}`` when the file could not be used. ``mlcloud.tracking.job_metrics``
  is its one reader.
* ``outputs["metrics"]`` = the file's URI, when there was one.

A job without ``metrics.json`` has no metrics: that is not an error. The full series stays in
the file; the record keeps what comparisons and the registry need.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlcloud.errors import MlcloudError, NotFound
from mlcloud.runtime import METRICS_FILE

if TYPE_CHECKING:
    from mlcloud.records import JobRecord

MAX_BYTES = 64 << 20  # a larger metrics.json is reported, not read (~1M points)
MAX_ARCHIVE_BYTES = 256 << 20  # how far into a compressed output archive the file is looked for
DETAILS_KEY = "tracking"
OUTPUTS_KEY = "metrics"


class MetricsFileError(ValueError):
    """metrics.json is there but unusable (too large, not JSON, wrong shape)."""


def parse(data: bytes) -> dict[str, Any]:
    """Validate ``metrics.json`` → ``{"params": {...}, "metrics": {name: [points]}}``.

    A flat ``{"name": number}`` file (what jobs wrote before ``log_metrics`` existed) is read as
    one point per metric."""
    if len(data) > MAX_BYTES:
        raise MetricsFileError(f"{len(data)} bytes, over the {MAX_BYTES >> 20} MiB collected")
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise MetricsFileError(f"not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise MetricsFileError("not a JSON object")
    if "params" not in raw and "metrics" not in raw:
        raw = {"params": {}, "metrics": {k: [{"value": v}] for k, v in raw.items()}}
    params, metrics = raw.get("params", {}), raw.get("metrics", {})
    if not isinstance(params, dict) or not isinstance(metrics, dict):
        raise MetricsFileError('"params" and "metrics" must be JSON objects')
    for key, value in params.items():
        if value is not None and not isinstance(value, str | int | float | bool):
            raise MetricsFileError(f"param {key!r}: {value!r} is not a JSON scalar")
    return {"params": params, "metrics": {k: _points(k, v) for k, v in metrics.items()}}


def _points(name: str, points: object) -> list[dict[str, Any]]:
    if not isinstance(points, list) or not points:
        raise MetricsFileError(f"metric {name!r}: expected a non-empty list of points")
    for i, point in enumerate(points):
        value = point.get("value") if isinstance(point, dict) else None
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise MetricsFileError(f"metric {name!r} point {i}: {value!r} is not a finite number")
    return points


def summary(parsed: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps: the params and each metric's last point, count, min and max."""
    metrics = {}
    for name, points in parsed["metrics"].items():
        values = [float(p["value"]) for p in points]
        metrics[name] = {
            "value": values[-1],
            "step": points[-1].get("step"),
            "count": len(values),
            "min": min(values),
            "max": max(values),
        }
    return {"params": parsed["params"], "metrics": metrics}


@dataclass(frozen=True)
class Collected:
    """What a terminal update merges into the record (``store.update_job(**c.update)``)."""

    details: dict[str, Any]
    outputs: dict[str, str]

    @property
    def update(self) -> dict[str, Any]:
        return {"merge_details": self.details, "merge_outputs": self.outputs or None}


def gather(source: str, read: Callable[[], bytes | None]) -> Collected:
    """Read metrics.json with ``read`` (None or ``NotFound``: there is none) and summarise it.
    A read that fails otherwise (an ``MlcloudError``: permissions, the network) is recorded as
    the reason: it never fails the status call that found the job finished."""
    try:
        data = read()
    except NotFound:
        data = None
    except (MlcloudError, OSError, MetricsFileError) as e:
        return Collected({DETAILS_KEY: {"source": source, "error": f"not collected: {e}"}}, {})
    if data is None:
        return Collected({DETAILS_KEY: {"source": source, "params": {}, "metrics": {}}}, {})
    try:
        tracking = {"source": source, **summary(parse(data))}
    except MetricsFileError as e:
        return Collected({DETAILS_KEY: {"source": source, "error": f"{METRICS_FILE}: {e}"}}, {})
    return Collected({DETAILS_KEY: tracking}, {OUTPUTS_KEY: source})


def gather_dir(output_dir: str | None) -> Collected:
    """:func:`gather` from a local output folder (the local and Ray providers)."""
    if not output_dir:
        return Collected({}, {})
    path = Path(output_dir) / METRICS_FILE
    return gather(str(path), lambda: read_file(path))


def due(record: JobRecord) -> bool:
    """Whether a record's metrics are still to be collected (collected once, at the end)."""
    return DETAILS_KEY not in record.details


# ---- readers the providers share -------------------------------------------------------------
def read_file(path: Path) -> bytes | None:
    """A local metrics.json (None when absent); refuses one over MAX_BYTES without reading it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size > MAX_BYTES:
        raise MetricsFileError(f"{size} bytes, over the {MAX_BYTES >> 20} MiB collected")
    return path.read_bytes()


class _Capped(io.RawIOBase):
    """A stream that refuses to go past ``limit`` bytes (a huge archive is not read to its end)."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self.stream, self.left = stream, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            raise MetricsFileError(f"not within the first {MAX_ARCHIVE_BYTES >> 20} MiB of it")
        chunk = self.stream.read(min(len(buffer), self.left))
        buffer[: len(chunk)] = chunk
        self.left -= len(chunk)
        return len(chunk)


def read_from_tar(stream: IO[bytes], name: str = METRICS_FILE) -> bytes | None:
    """The member ``name`` (at the archive's top, ``./`` or not) of a gzipped tar read as a
    stream, e.g. SageMaker's ``output.tar.gz`` straight from S3: nothing is written to disk and
    reading stops at the member."""
    capped = io.BufferedReader(_Capped(stream, MAX_ARCHIVE_BYTES))
    try:
        with tarfile.open(fileobj=capped, mode="r|gz") as archive:
            for member in archive:
                if member.name.removeprefix("./") == name and member.isfile():
                    if member.size > MAX_BYTES:
                        raise MetricsFileError(f"{member.size} bytes, over the limit")
                    handle = archive.extractfile(member)
                    return handle.read() if handle is not None else None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise MetricsFileError(f"the output archive is unreadable: {e}") from None
    return None
