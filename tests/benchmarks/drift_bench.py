"""Drift at scale (issue 13): 1,000,000 captured rows x 20 features (18 numeric, 2 with a few
integer categories, one numeric shifted by 0.3 sd) and the predicted classes, against a baseline
profiled from 10,000 training rows; the time of ``mlcloud.monitor.drift.compare`` (every
statistic, PSI, the report's histograms, the volume series) and the peak memory. Targets:
<= 3 s and <= 1 GiB.

    python tests/benchmarks/drift_bench.py [--rows 1000000] [--features 20] [--reps 3]
        [--read]    also time reading the window back from capture files in the local
                    servers' JSON Lines format (mlcloud.monitor.capture, MON-B's reader)

Peak memory: the process's peak resident set (ru_maxrss: the interpreter, numpy, scipy, the
window itself and the comparison), and tracemalloc's peak of the comparison alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlcloud import modeldir, modelprofile
from mlcloud.monitor import drift, profile
from mlcloud.monitor.capture import CaptureWindow

CATEGORICAL = 2


def _data(rows: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width))
    x[:, width - CATEGORICAL :] = rng.integers(0, 4, size=(rows, CATEGORICAL))
    return x


def baseline(root: Path, rows: int, width: int) -> profile.Baseline:
    x = _data(rows, width, seed=1)
    modelprofile.write(root, x, target=(x[:, 0] > 0).astype(int) + (x[:, 1] > 1))
    modeldir.write_manifest(root, "custom", {"predictor": "model:Predictor"})
    return profile.load(root)


def window(rows: int, width: int) -> CaptureWindow:
    x = _data(rows, width, seed=2)
    x[:, 3] += 0.3
    now = time.time()
    return CaptureWindow(
        features=x,
        feature_names=[f"f{i}" for i in range(width)],
        predictions=(x[:, 0] > 0).astype(int) + (x[:, 1] > 1),
        timestamps=np.linspace(now - 86400, now, rows),
        request_ids=np.empty(0, dtype=object),
        versions=np.empty(0, dtype=object),
    )


def read_back(win: CaptureWindow, directory: Path) -> float:
    """Write the window as capture files (100 rows per request), time reading it back."""
    from mlcloud.monitor.capture import to_window
    from providers.local.capture import read_dir

    directory.mkdir()
    step = 100
    with (directory / "capture-0000000000000-1-0.jsonl").open("w") as fh:
        for i in range(0, len(win), step):
            fh.write(json.dumps({
                "ts": float(win.timestamps[i]), "request_id": f"r{i}", "version": "v1",
                "instances": win.features[i : i + step].tolist(),
                "predictions": win.predictions[i : i + step].tolist(),
            }) + "\n")  # fmt: skip
    start = time.perf_counter()
    found = read_dir(directory, 0, time.time() + 1)
    got = to_window(found.records, win.feature_names, found.dropped)
    elapsed = time.perf_counter() - start
    assert len(got) == len(win), (len(got), len(win))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--baseline", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--read", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline(Path(tmp) / "model", args.baseline, args.features)
        win = window(args.rows, args.features)
        times, result = [], None
        for rep in range(args.reps):
            if rep == args.reps - 1:
                tracemalloc.start()
            start = time.perf_counter()
            result = drift.compare(base, win, since=0, until=time.time())
            times.append(time.perf_counter() - start)
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result is not None and result.drifted == ["f3"], result and result.drifted
        methods = sorted({f.method for f in result.features})
        print(f"drift: {args.rows:,} rows x {args.features} features vs {args.baseline:,} "
              f"baseline rows ({', '.join(methods)}); flagged {result.drifted}")  # fmt: skip
        print(f"  compare: median {statistics.median(times):.2f} s, best {min(times):.2f} s "
              f"over {args.reps} (target <= 3 s)")  # fmt: skip
        print(f"  comparison's own peak allocation (tracemalloc): {traced / 2**20:.0f} MiB")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
        print(f"  process peak RSS: {peak:.0f} MiB (target <= 1024 MiB)")
        if args.read:
            seconds = read_back(win, Path(tmp) / "cap")
            print(f"  reading the window from capture files: {seconds:.2f} s")


if __name__ == "__main__":
    main()
