"""Request capture of local endpoints: the servers' environment, and reading the files back.

The servers write JSON Lines under ``$MLCLOUD_HOME/endpoints/<name>/capture`` (serving/capture.py
has the format and why); every version's servers write to the same directory, each record
naming its version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.provider import CapturedRecords
from providers.local.endpoint_plan import endpoint_dir
from serving import capture as fmt

if TYPE_CHECKING:
    from mlcloud.records import EndpointRecord
    from mlcloud.specs import Deployment
    from providers.local.provider import LocalProvider

ENV_VERSION = "MLCLOUD_SERVE_VERSION"


def capture_dir(home: Path, name: str) -> Path:
    return endpoint_dir(home, name) / "capture"


def server_env(deployment: Deployment, home: Path, version: str) -> dict[str, str]:
    """What a server of ``version`` needs: its version id, and the capture settings if on."""
    env = {ENV_VERSION: version}
    if deployment.capture is not None:
        env[fmt.ENV_DIR] = str(capture_dir(home, deployment.name))
        env[fmt.ENV_SAMPLE] = repr(deployment.capture.sample)
        env[fmt.ENV_MAX_MB] = str(deployment.capture.max_mb)
    return env


def read(
    provider: LocalProvider, record: EndpointRecord, since: float, until: float
) -> CapturedRecords:
    return read_dir(capture_dir(provider.store.home, record.name), since, until)


def read_dir(directory: Path, since: float, until: float) -> CapturedRecords:
    """Every whole record in the window; a file is read only if its span can overlap it (its
    name holds its opening time, its mtime its last write). Read in bulk by pyarrow's JSON
    reader when it is installed and the files parse as one table (a 1M-row window: seconds,
    not the tens of seconds of one ``json.loads`` a line); else line by line."""
    blobs = []
    for path in sorted(directory.glob(f"{fmt.PREFIX}*{fmt.SUFFIX}")):
        try:
            opened = int(path.name[len(fmt.PREFIX) :].split("-", 1)[0]) / 1000
            # mtime is the kernel's coarse clock (behind time.time() by a tick): a margin
            if opened >= until or path.stat().st_mtime < since - 2.0:
                continue
            blobs.append(path.read_bytes())
        except (ValueError, FileNotFoundError):  # not ours, or deleted by the cap meanwhile
            continue
    dropped = _dropped(directory)
    table = _arrow(blobs, since, until)
    if table is not None:
        return CapturedRecords([], dropped, table=table)
    records: list[dict[str, Any]] = []
    for data in blobs:
        for line in data.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line a writer is still writing
            if since <= rec.get("ts", 0) < until:
                records.append(rec)
    records.sort(key=lambda r: r["ts"])
    return CapturedRecords(records, dropped)


def _arrow(blobs: list[bytes], since: float, until: float) -> Any:
    """The window as one pyarrow Table sorted by ``ts``, or None (no pyarrow, no records, or
    records that do not make one table: mixed types, a line being written)."""
    whole = [b[: b.rfind(b"\n") + 1] for b in blobs]  # a last line without its newline: later
    data = b"".join(whole)
    if not data:
        return None
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.compute as pc  # type: ignore[import-untyped]
        import pyarrow.json as pj  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        table = pj.read_json(pa.BufferReader(data))
        ts = table.column("ts")
        keep = pc.and_(pc.greater_equal(ts, since), pc.less(ts, until))
        return table.filter(keep).sort_by("ts")
    except (pa.ArrowException, KeyError, ValueError, TypeError):
        return None


def _dropped(directory: Path) -> int:
    total = 0
    for path in directory.glob("stats-*.json"):
        try:
            total += int(json.loads(path.read_text()).get("dropped", 0))
        except (OSError, ValueError):
            continue
    return total
