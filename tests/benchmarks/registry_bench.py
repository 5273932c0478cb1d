"""Registry at scale (issue 11): 10,000 versions across 100 models, each with an alias history,
on the SQLite store; median and p95 of `models list`, `models show` (a model; a version with its
lineage), an alias move and `models history`, through ``mlcloud.api`` (what the CLI calls,
a fresh store handle per call, as each CLI invocation has). Target: each median <= 50 ms.

    python tests/benchmarks/registry_bench.py [--versions 10000] [--models 100] [--reps 50]

With MLCLOUD_DATABASE_URL=postgresql://… set, the same on PostgreSQL (an empty database).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _fill(models: int, versions: int, moves: int) -> None:
    from mlcloud.records import ModelVersionRecord
    from mlcloud.store import Store
    from mlcloud.store import models as db

    store = Store.open()
    per = versions // models
    data = {"uri": "s3://bench/data", "digest": "uri:s3://bench/data", "kind": "remote"}
    details = {"metrics": {"accuracy": 0.9}, "params": {"C": 1.0},
               "manifest": {"model.skops": "0" * 64}, "data": {"train": data}}  # fmt: skip
    for m in range(models):
        for v in range(per):
            db.add_version(store, ModelVersionRecord(
                name=f"model-{m:03d}", version=0, uri=f"s3://bench/model-{m:03d}/{v}",
                sha256=f"{m:03d}{v:061d}", framework="sklearn", provider="local",
                created_by="bench", details=details,
            ))  # fmt: skip
        for i in range(moves):
            db.move_alias(store, f"model-{m:03d}", "champion", 1 + i % per, actor="bench")
    store.close()


def _time(fn: Callable[[int], object], reps: int) -> tuple[float, float]:
    samples = []
    for i in range(reps):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--moves", type=int, default=20, help="alias moves per model")
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    os.environ["MLCLOUD_HOME"] = tempfile.mkdtemp(prefix="registry-bench-")
    started = time.perf_counter()
    _fill(args.models, args.versions, args.moves)
    url = os.environ.get("MLCLOUD_DATABASE_URL")
    backend = "PostgreSQL" if url else f"SQLite (WAL) at {os.environ['MLCLOUD_HOME']}"
    print(f"store: {backend}; {args.versions} versions, "
          f"{args.models} models, {args.moves} alias moves each; filled in "
          f"{time.perf_counter() - started:.1f}s")  # fmt: skip

    from mlcloud import api

    per = args.versions // args.models

    def name(i: int) -> str:
        return f"model-{i % args.models:03d}"

    ops: dict[str, Callable[[int], object]] = {
        "models list": lambda i: api.list_models(),
        "models show NAME": lambda i: api.model(name(i)),
        "models show NAME@champion": lambda i: api.model(f"{name(i)}@champion"),
        "models alias (move)": lambda i: api.move_alias(name(i), "champion", 1 + (i * 7) % per),
        "models history": lambda i: api.alias_history(name(i)),
    }
    worst = 0.0
    print(f"{'operation':<28}{'median ms':>10}{'p95 ms':>9}")
    for label, fn in ops.items():
        fn(0)  # warm: imports, first connection
        median, p95 = _time(fn, args.reps)
        worst = max(worst, median)
        print(f"{label:<28}{median:>10.2f}{p95:>9.2f}")
    print(f"worst median {worst:.2f} ms: {'OK' if worst <= 50 else 'OVER'} the 50 ms target")


if __name__ == "__main__":
    main()
