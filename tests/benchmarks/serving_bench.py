"""Serving benchmark: mlcloud's service vs. hand-written BentoML vs. minimal FastAPI.

Run as a script (never collected by pytest)::

    python tests/benchmarks/serving_bench.py [--duration 5] [--concurrency 1 8 32] [--cold 3]

Same iris sklearn model, same machine, same run, all servers on 127.0.0.1, one at a time.
Load comes from wrk (``apt-get install -y wrk``) or, if wrk is missing, a bounded Python loop.
Prints throughput, p50/p99 per concurrency (medians over interleaved rounds), the ratios,
the gc.freeze() A/B at concurrency 1, and cold start (launch -> ready, median).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.benchmarks.serving_load import LoadResult, run_load  # noqa: E402
from tests.benchmarks.serving_procs import Server, free_port  # noqa: E402

BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]})


def make_model(root: Path) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from mlcloud import modeldir

    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    return modeldir.save(model, "sklearn", root / "iris", example=[[5.1, 3.5, 1.4, 0.2]])


def median_result(runs: list[LoadResult]) -> LoadResult:
    def med(xs: list[float]) -> float:
        return float(statistics.median(xs))

    return LoadResult(
        med([r.rps for r in runs]),
        med([r.p50_ms for r in runs]),
        med([r.p99_ms for r in runs]),
        sum(r.requests for r in runs),
        sum(r.errors for r in runs),
    )


def servers(model: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (argv without host/port, env, ready path)."""
    bento = [sys.executable, "-m", "bentoml", "serve"]
    return {
        "mlcloud": (
            [*bento, "serving.service:MlcloudService"],
            {"MLCLOUD_SERVE_MODEL": str(model)},
            "/readyz",
        ),
        "mlcloud-nofreeze": (
            [*bento, "serving.service:MlcloudService"],
            {"MLCLOUD_SERVE_MODEL": str(model), "MLCLOUD_SERVE_GC_FREEZE": "0"},
            "/readyz",
        ),
        "bentoml": (
            [*bento, "tests.benchmarks.serving_handwritten:IrisClassifier"],
            {"BENCH_MODEL_DIR": str(model)},
            "/readyz",
        ),
        "fastapi": (
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.benchmarks.serving_fastapi:app",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            {"BENCH_MODEL_DIR": str(model)},
            "/docs",
        ),
    }


def launch(argv: list[str], env: dict[str, str], ready: str, logs: Path) -> Server:
    port = free_port()
    server = Server([*argv, "--host", "127.0.0.1", "--port", str(port)], env, port, logs, REPO)
    server.wait_ready(ready, timeout=90)
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per server (median)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "python"
    print(f"load tool: {tool}; duration {args.duration}s per point; cpus {os.cpu_count()}")

    runs: dict[str, dict[int, list[LoadResult]]] = {}
    cold: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mlcloud-bench-") as tmp:
        model = make_model(Path(tmp))
        table = servers(model)
        # All servers up at once (idle ones cost nothing), then interleaved: every round runs
        # each concurrency on each server back to back, so drift in the machine's load hits
        # all of them alike; medians over rounds are reported.
        live: dict[str, Server] = {}
        try:
            for name, (argv, env, ready) in table.items():
                live[name] = launch(argv, env, ready, Path(tmp) / f"{name}.log")
                run_load(live[name].url("/predict"), BODY, 2, 1.0, tool)  # warm-up
            for _ in range(args.rounds):
                for c in args.concurrency:
                    for name, server in live.items():
                        if name == "mlcloud-nofreeze" and c != 1:
                            continue  # the gc.freeze() A/B is about p99 at concurrency 1
                        r = run_load(server.url("/predict"), BODY, c, args.duration, tool)
                        runs.setdefault(name, {}).setdefault(c, []).append(r)
        finally:
            for server in live.values():
                server.stop()
        for name in ("mlcloud", "bentoml"):
            argv, env, ready = table[name]
            times = []
            for i in range(args.cold):
                started = time.perf_counter()
                server = launch(argv, env, ready, Path(tmp) / f"{name}-cold{i}.log")
                times.append(time.perf_counter() - started)
                server.stop()
            cold[name] = times
    results = {n: {c: median_result(rs) for c, rs in v.items()} for n, v in runs.items()}

    print(f"\n{'server':<16} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, by_conc in results.items():
        for c, r in by_conc.items():
            print(
                f"{name:<16} {c:>4} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6}"
            )
    print("\nthroughput ratio  mlcloud/bentoml  mlcloud/fastapi  bentoml/fastapi")
    for c in args.concurrency:
        m, b, f = (results[n][c].rps for n in ("mlcloud", "bentoml", "fastapi"))
        print(f"conc {c:<12} {m / b:>15.2f} {m / f:>16.2f} {b / f:>16.2f}")
    print(
        "\ncold start to ready (s): "
        + ", ".join(
            f"{n} median {statistics.median(t):.2f} ({', '.join(f'{x:.2f}' for x in t)})"
            for n, t in cold.items()
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tool": tool,
                    "results": {
                        n: {c: r.__dict__ for c, r in v.items()} for n, v in results.items()
                    },
                    "rounds": {
                        n: {c: [r.__dict__ for r in rs] for c, rs in v.items()}
                        for n, v in runs.items()
                    },
                    "cold_start_s": cold,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
