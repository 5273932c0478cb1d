"""Shared helpers of the monitoring tests: a model dir with a baseline, windows built directly
(the shape ``mlcloud.monitor.capture.read_window`` returns) and capture files in the local
servers' format (serving/capture.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcloud import runtime
from mlcloud.monitor.capture import CaptureWindow

NAMES = ["f0", "f1", "f2", "f3"]


def gaussian_model(root: Path, rows: int = 10_000, seed: int = 1) -> Path:
    """A logistic regression on four N(0, 1) features, saved with its baseline."""
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(seed).normal(size=(rows, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    return runtime.save_model(model, "sklearn", root, reference=x, feature_names=NAMES)


def window(features: np.ndarray, predictions: Any = None, since: float = 0.0,
           until: float = 3600.0, names: list[str] | None = None) -> CaptureWindow:  # fmt: skip
    n = features.shape[0]
    preds = np.zeros(0) if predictions is None else np.asarray(predictions)
    return CaptureWindow(
        features=features,
        feature_names=list(names or NAMES[: features.shape[1]]),
        predictions=preds,
        timestamps=np.linspace(since, until - 1e-3, n),
        request_ids=np.array([f"r{i}" for i in range(n)], dtype=object),
        versions=np.array([""] * n, dtype=object),
    )


def shifted(n: int, shift: float, column: int = 2, seed: int = 2) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 4))
    x[:, column] += shift
    return x


def write_capture(directory: Path, rows: np.ndarray, predictions: list[Any], ts: float,
                  version: str = "v1") -> Path:  # fmt: skip
    """One capture file as a local server writes it: one JSON record per request (here one
    instance each), named by its opening time in ms, pid and sequence."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"capture-{int(ts * 1000):013d}-{os.getpid()}-{time.time_ns() % 10**6}.jsonl"
    with path.open("w") as fh:
        for i, (row, pred) in enumerate(zip(rows.tolist(), predictions, strict=True)):
            rec = {"ts": ts + i * 1e-3, "request_id": f"q{ts}-{i}", "version": version,
                   "instances": [row], "predictions": [pred]}  # fmt: skip
            fh.write(json.dumps(rec) + "\n")
    os.utime(path, (ts + rows.shape[0] * 1e-3 + 1, ts + rows.shape[0] * 1e-3 + 1))
    return path
