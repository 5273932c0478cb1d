"""Captured requests of an endpoint, on any provider, as arrays: :func:`read_window`.

Where the records come from is the provider's business (``Provider.read_capture``): the local
servers' JSON Lines files, SageMaker's DataCaptureConfig files in S3, Vertex's request-response
log in BigQuery, Azure ML's data collector blobs. Here they become one :class:`CaptureWindow`,
one row per instance (a request may carry several), joined with the ground truth sent later by
``mlcloud feedback`` (:func:`add_labels`), by request id.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcloud.errors import SpecError
from mlcloud.store import Store

if TYPE_CHECKING:
    from mlcloud.provider import Provider
    from mlcloud.records import EndpointRecord

LABELS_DIR = "feedback"
MAX_LABEL_ROWS = 10_000_000


@dataclass
class CaptureWindow:
    """The captured rows of one endpoint in ``[since, until)``, one per instance.

    ``features`` is (n, d): float64 when every value is a number (a missing one is NaN), else
    object. ``feature_names``: the keys of dict instances, else the names passed to
    :func:`read_window` (the baseline's), else ``"0"``, ``"1"``…. ``predictions``: one per
    row. ``labels``: the ground truth from ``mlcloud feedback`` joined by request id, ``None``
    where none was sent (object array; ``labelled`` is the mask). ``dropped``: records the
    capture could not keep (its queue was full), over the capture's lifetime.
    """

    features: np.ndarray
    feature_names: list[str]
    predictions: np.ndarray
    timestamps: np.ndarray
    request_ids: np.ndarray
    versions: np.ndarray
    dropped: int = 0
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])

    @property
    def labelled(self) -> np.ndarray:
        """Mask of the rows that have a label."""
        return np.array([label is not None for label in self.labels], dtype=bool)


def read_window(
    endpoint_record: EndpointRecord,
    since_ts: float,
    until_ts: float | None = None,
    *,
    feature_names: Sequence[str] | None = None,
    store: Store | None = None,
    provider: Provider[Any] | None = None,
) -> CaptureWindow:
    """The captured requests of ``endpoint_record`` with ``since_ts <= ts < until_ts`` (now when
    None), with labels where ``mlcloud feedback`` sent some. ``SpecError`` when the endpoint
    captures nothing (deployed without ``capture``). ``provider``: the endpoint's provider
    object when the caller has it (else the one its profile names)."""
    from mlcloud import api

    store = store or (provider.store if provider is not None else Store.open())
    provider = provider or api.provider_named(endpoint_record.provider, store)
    until = time.time() if until_ts is None else until_ts
    found = provider.read_capture(endpoint_record, since_ts, until)
    window = None if found.table is None else from_table(found.table, feature_names, found.dropped)
    if window is None:
        records = found.records if found.table is None else found.table.to_pylist()
        window = to_window(records, feature_names, found.dropped)
    return add_labels(window, read_labels(store.home, endpoint_record.name))


def to_window(
    records: Iterable[Mapping[str, Any]], names: Sequence[str] | None = None, dropped: int = 0
) -> CaptureWindow:
    """Records in the providers' shape (``Provider.read_capture``) → one row per instance."""
    rows: list[Any] = []
    preds: list[Any] = []
    ts: list[float] = []
    rids: list[str] = []
    versions: list[str] = []
    for rec in records:
        instances = rec.get("instances") or []
        predictions = rec.get("predictions") or []
        if len(predictions) != len(instances):
            predictions = [None] * len(instances)  # a platform that kept only one side
        rows.extend(instances)
        preds.extend(predictions)
        n = len(instances)
        ts.extend([float(rec["ts"])] * n)
        rids.extend([str(rec.get("request_id", ""))] * n)
        versions.extend([str(rec.get("version", ""))] * n)
    features, feature_names = _matrix(rows, names)
    return CaptureWindow(
        features=features,
        feature_names=feature_names,
        predictions=_array(preds),
        timestamps=np.asarray(ts, dtype=np.float64),
        request_ids=np.asarray(rids, dtype=object),
        versions=np.asarray(versions, dtype=object),
        dropped=dropped,
        labels=np.full(len(ts), None, dtype=object),
    )


def from_table(table: Any, names: Sequence[str] | None, dropped: int) -> CaptureWindow | None:
    """The fast path: a pyarrow Table whose instances are rows of numbers of one width (what a
    model with a fixed signature receives) → arrays without a Python object per value. None
    when the table is not that shape (named features, strings, ragged rows): to_window then."""
    import pyarrow as pa  # type: ignore[import-untyped]

    if table.num_rows == 0:  # nothing captured in the window (yet): no width to shape by
        return None
    try:
        outer = table.column("instances").combine_chunks()
        preds = table.column("predictions").combine_chunks()
        if not (pa.types.is_list(outer.type) and pa.types.is_list(outer.type.value_type)):
            return None
        if not _numeric(outer.type.value_type.value_type) or not _numeric(preds.type.value_type):
            return None
        counts = outer.value_lengths().to_numpy(zero_copy_only=False)
        rows = outer.flatten()
        widths = rows.value_lengths().to_numpy(zero_copy_only=False)
        width = int(widths[0]) if len(widths) else len(names or ())
        pred_counts = preds.value_lengths().to_numpy(zero_copy_only=False)
        if (widths != width).any() or (pred_counts != counts).any():
            return None
        values = rows.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        predictions = preds.flatten().to_numpy(zero_copy_only=False)
    except (pa.ArrowException, KeyError, ValueError, TypeError, AttributeError):
        return None
    keys = list(names) if names and len(names) == width else [str(i) for i in range(width)]
    per_row = np.repeat  # each request's ts, id and version, once per instance
    return CaptureWindow(
        features=values.reshape(-1, width),
        feature_names=keys,
        predictions=predictions,
        timestamps=per_row(table.column("ts").to_numpy().astype(np.float64), counts),
        request_ids=per_row(np.asarray(table.column("request_id").to_pylist(), object), counts),
        versions=per_row(np.asarray(table.column("version").to_pylist(), object), counts),
        dropped=dropped,
        labels=np.full(int(counts.sum()), None, dtype=object),
    )


def _numeric(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))


def _matrix(rows: list[Any], names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if rows and all(isinstance(r, Mapping) for r in rows):
        keys = list(names or dict.fromkeys(k for r in rows for k in r))
        return _array([[r.get(k) for k in keys] for r in rows], 2, len(keys)), keys
    table: list[list[Any]] = [list(r) if isinstance(r, list | tuple) else [r] for r in rows]
    width = max((len(r) for r in table), default=len(names or ()))
    keys = list(names) if names and len(names) == width else [str(i) for i in range(width)]
    return _array([r + [None] * (width - len(r)) for r in table], 2, width), keys


def _array(values: list[Any], ndim: int = 1, width: int = 0) -> np.ndarray:
    """float64 (None → NaN) when every value is a number, else object."""
    if not values:
        return np.empty((0, width) if ndim == 2 else (0,), dtype=np.float64)
    try:
        out = np.array(values, dtype=np.float64)  # None → nan; a string raises
    except (TypeError, ValueError):
        out = np.empty((len(values), width) if ndim == 2 else len(values), dtype=object)
        out[...] = values if ndim == 1 else [list(r) for r in values]
        return out
    return out if out.ndim == ndim else out.reshape(len(values), -1)


# ---- delayed labels (``mlcloud feedback``) ------------------------------------------------------
def labels_dir(home: Path, endpoint: str) -> Path:
    """Where the ground truth of ``endpoint`` is kept: ``$MLCLOUD_HOME/feedback/<endpoint>``,
    one place for every provider (a cloud's capture bucket is not ours to write)."""
    return home / LABELS_DIR / endpoint


def parse_labels(text: str, fmt: str) -> dict[str, Any]:
    """``request_id,label`` rows (CSV with that header, or JSON Lines with those keys) → a
    mapping; a label that is a number stays one."""
    out: dict[str, Any] = {}
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"request_id", "label"} <= set(reader.fieldnames):
            raise SpecError(
                "the labels CSV needs a header with request_id and label",
                hint="first line: request_id,label",
            )
        rows: Iterable[Mapping[str, Any]] = reader
    else:
        rows = (_json_row(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip())
    for n, row in enumerate(rows, 1):
        rid, label = row.get("request_id"), row.get("label")
        if not rid or label is None or label == "":
            raise SpecError(f"labels row {n}: needs a request_id and a label, got {dict(row)}")
        out[str(rid)] = _number(label) if fmt == "csv" else label
        if len(out) > MAX_LABEL_ROWS:
            raise SpecError(f"more than {MAX_LABEL_ROWS} labels in one file; split it")
    return out


def _json_row(n: int, line: str) -> Mapping[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise SpecError(f"labels line {n}: not JSON ({e})") from None
    if not isinstance(row, dict):
        raise SpecError(f"labels line {n}: must be an object with request_id and label")
    return row


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text else value


def write_labels(home: Path, endpoint: str, labels: Mapping[str, Any]) -> Path:
    """Append a feedback batch (one JSON Lines file, written whole then renamed)."""
    directory = labels_dir(home, endpoint)
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    path = directory / f"labels-{int(now * 1000):013d}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rid, label in labels.items():
            f.write(json.dumps({"request_id": rid, "label": label, "ts": now}) + "\n")
    tmp.replace(path)
    return path


def read_labels(home: Path, endpoint: str) -> dict[str, Any]:
    """Every label sent for ``endpoint``; a later batch overrides an earlier one."""
    out: dict[str, Any] = {}
    for path in sorted(labels_dir(home, endpoint).glob("labels-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            out[row["request_id"]] = row["label"]
    return out


def add_labels(window: CaptureWindow, labels: Mapping[str, Any]) -> CaptureWindow:
    """``window`` with ``labels`` set per row by request id. A list label of the request's
    instance count gives each instance its own; any other label applies to every instance."""
    out = np.full(len(window), None, dtype=object)
    if labels:
        position: dict[str, int] = {}
        for i, rid in enumerate(window.request_ids):
            label = labels.get(rid)
            if label is None:
                continue
            k = position.get(rid, 0)
            position[rid] = k + 1
            out[i] = label[k] if isinstance(label, list) and k < len(label) else label
    window.labels = out
    return window


@dataclass
class Feedback:
    """What ``mlcloud feedback`` stored: how many labels, how many matched a captured request
    (in the last ``window_s``), and the file."""

    endpoint: str
    labels: int
    matched: int
    path: str


def feedback(endpoint: str, labels_file: str | Path, *, window_s: float = 30 * 86400) -> Feedback:
    """Store the ground truth in ``labels_file`` (``.csv`` with ``request_id,label``, or
    ``.jsonl``/``.json`` lines ``{"request_id": …, "label": …}``) beside the endpoint's capture;
    ``read_window`` joins it to the captured predictions by request id."""
    path = Path(labels_file)
    fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    if path.suffix.lower() not in (".csv", ".jsonl", ".json", ".ndjson"):
        raise SpecError(f"{path}: a labels file is .csv or .jsonl", hint="request_id,label rows")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}") from None
    labels = parse_labels(text, fmt)
    if not labels:
        raise SpecError(f"{path} holds no labels", hint="request_id,label rows")
    store = Store.open()
    record = store.get_endpoint(endpoint)  # NotFoundLocally names it
    stored = write_labels(store.home, endpoint, labels)
    try:
        window = read_window(record, time.time() - window_s, store=store)
        matched = len(set(labels) & {str(r) for r in window.request_ids})
    except SpecError:  # the endpoint captures nothing: kept anyway, matched later or never
        matched = 0
    return Feedback(endpoint, len(labels), matched, str(stored))
