"""The training baseline of a model: a compact profile of the data it was trained on.

``runtime.save_model(..., reference=X)`` calls :func:`write` before the manifest is written, so
the profile's two files are listed in ``mlcloud-model.yaml`` with their sha256 like every model
file. ``mlcloud monitor`` compares what an endpoint receives with it (:mod:`mlcloud.monitor`).

* ``mlcloud-profile.json``: per feature its kind (numeric / categorical), count, missing count
  and rate; numeric: mean, std, min, max, 101 quantiles and a 20-bin histogram; categorical:
  the count of each value (the 200 most frequent, the rest as ``__other__``). The same for the
  model's predictions on ``X`` (when the model has ``predict``) and for the target, if given.
* ``mlcloud-profile-sample.npy``: a uniform sample without replacement (what a reservoir yields)
  of at most 10,000 rows of the numeric columns, float64 with NaN for missing, for the
  two-sample tests (the file loads with ``allow_pickle=False``: data, never code).

Vendored into jobs with ``runtime.py``: standard library at import time; numpy is imported when
a profile is built, since a reference array implies numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlcloud.errors import ModelError

PROFILE = "mlcloud-profile.json"
SAMPLE = "mlcloud-profile-sample.npy"
FORMAT_VERSION = 1
SAMPLE_ROWS = 10_000
HIST_BINS = 20
# A numeric column with at most this many distinct values is compared as categorical (as
# Evidently does): class labels, flags, small counts.
CATEGORICAL_MAX_UNIQUE = 5
MAX_CATEGORIES = 200
OTHER = "__other__"
PREDICTION, TARGET = "__prediction__", "__target__"


class ProfileError(ModelError):
    """A reference cannot be profiled (shape, lengths), or a stored profile is malformed."""


def category_key(value: Any) -> str | None:
    """The text a categorical value is counted under, the same at training and serving time:
    1, 1.0, numpy's 1 and True are "1" (a JSON request's booleans arrive as numbers); None
    and NaN are missing (``None``)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) or hasattr(value, "dtype"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        if number != number:  # NaN
            return None
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def columns(data: Any, names: list[str] | None = None) -> tuple[list[str], list[Any]]:
    """``data`` (a 2-D array or list of rows, a DataFrame, or {name: column}) as named 1-D numpy
    columns. Array columns are named ``names`` or ``f0``, ``f1``, …"""
    import numpy as np

    if hasattr(data, "columns") and hasattr(data, "iloc"):  # a pandas DataFrame
        return [str(c) for c in data.columns], [
            np.asarray(data[c].to_numpy()) for c in data.columns
        ]
    if isinstance(data, Mapping):
        return [str(k) for k in data], [np.asarray(v).reshape(-1) for v in data.values()]
    array = np.asarray(data)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2:
        raise ProfileError(f"a reference must be rows of features (2-D), got shape {array.shape}")
    width = array.shape[1]
    if names is not None and len(names) != width:
        raise ProfileError(f"{len(names)} feature names for {width} columns")
    return list(names or [f"f{i}" for i in range(width)]), [array[:, i] for i in range(width)]


def is_numeric(column: Any) -> bool:
    return bool(column.dtype.kind in "iuf")


def summarize(column: Any) -> dict[str, Any]:
    """One column's profile entry (see the module doc)."""
    import numpy as np

    n = int(column.shape[0])
    if is_numeric(column):
        values = column.astype(np.float64)
        present = values[~np.isnan(values)]
        distinct = np.unique(present[:100_000])
        if distinct.size > CATEGORICAL_MAX_UNIQUE or present.size == 0:
            return _numeric(present, n)
        keys = [category_key(v) for v in present.tolist()]
    else:
        keys = [category_key(v) for v in column.tolist()]
    return _categorical([k for k in keys if k is not None], n)


def _numeric(present: Any, n: int) -> dict[str, Any]:
    import numpy as np

    entry: dict[str, Any] = {"kind": "numeric", "count": n, "missing": n - int(present.size)}
    entry["missing_rate"] = entry["missing"] / n if n else 0.0
    if present.size:
        counts, edges = np.histogram(present, bins=HIST_BINS)
        entry.update(
            mean=float(present.mean()),
            std=float(present.std()),
            min=float(present.min()),
            max=float(present.max()),
            quantiles=np.quantile(present, np.linspace(0, 1, 101)).tolist(),
            hist={"edges": edges.tolist(), "counts": counts.tolist()},
        )
    return entry


def _categorical(keys: list[str], n: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:MAX_CATEGORIES])
    rest = sum(c for _, c in ranked[MAX_CATEGORIES:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    missing = n - len(keys)
    return {"kind": "categorical", "count": n, "missing": missing,
            "missing_rate": missing / n if n else 0.0, "categories": kept}  # fmt: skip


def _predictions(model: Any, reference: Any) -> Any:
    """The model's predictions on its training features, the baseline of the prediction
    distribution; ``None`` when it has no ``predict`` or it refuses this input."""
    predict = getattr(model, "predict", None)
    if not callable(predict):
        return None
    try:
        return predict(reference)
    except Exception:  # the baseline is optional: a model with other input needs stays saveable
        return None


def write(
    root: Path,
    reference: Any,
    *,
    target: Any = None,
    model: Any = None,
    feature_names: list[str] | None = None,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> dict[str, Any]:
    """Profile ``reference`` (and ``target``, and ``model``'s predictions on it) into ``root``;
    returns the JSON profile. Call before the manifest is written."""
    import numpy as np

    names, cols = columns(reference, feature_names)
    rows = int(cols[0].shape[0]) if cols else 0
    if rows == 0:
        raise ProfileError("the reference has no rows", hint="pass the training features")
    extra = {PREDICTION: _predictions(model, reference), TARGET: target}
    for key, value in list(extra.items()):
        extra[key] = None if value is None else np.asarray(value).reshape(-1)
        if extra[key] is not None and extra[key].shape[0] != rows:
            raise ProfileError(
                f"{key.strip('_')} has {extra[key].shape[0]} rows, the reference {rows}"
            )
    # (no zip(strict=...): this module runs in jobs on Python 3.8)
    entries = [{"name": names[i], **summarize(cols[i])} for i in range(len(cols))]
    profile: dict[str, Any] = {"format_version": FORMAT_VERSION, "rows": rows, "features": entries}
    sampled = [(names[i], cols[i]) for i in range(len(cols)) if entries[i]["kind"] == "numeric"]
    for key, value in extra.items():
        if value is not None:
            profile[key.strip("_")] = summarize(value)
            if profile[key.strip("_")]["kind"] == "numeric":
                sampled.append((key, value))
    keep = np.arange(rows)
    if rows > sample_rows:  # a uniform sample without replacement, as a reservoir would keep
        keep = np.sort(np.random.default_rng(seed).choice(rows, sample_rows, replace=False))
    matrix = np.empty((keep.size, len(sampled)), dtype=np.float64)
    for i, (_, col) in enumerate(sampled):
        matrix[:, i] = col[keep].astype(np.float64)
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / SAMPLE, matrix, allow_pickle=False)
    profile["sample"] = {"file": SAMPLE, "rows": int(keep.size), "columns": [n for n, _ in sampled]}
    tmp = root / f".{PROFILE}.tmp"
    tmp.write_text(json.dumps(profile, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, root / PROFILE)
    return profile
