"""Capture benchmark: the BentoML server with request capture at sample 1.0 vs without.

Run as a script (never collected by pytest)::

    python tests/benchmarks/capture_bench.py [--duration 5] [--concurrency 8] [--rounds 3]
    python tests/benchmarks/capture_bench.py --format [--records 100000]

Same iris model, same machine, same run, interleaved rounds (medians): two servers, one with
``MLCLOUD_CAPTURE_DIR`` set (every request captured), one without. Targets (issue 13): req/s
with capture >= 0.95x without at concurrency 8, p99 within 10 %. Also reports what the capture
wrote and dropped. Load from wrk when installed, else a bounded Python loop.

``--format`` measures the capture file format in-process (why serving/capture.py writes JSON
Lines): CPU and wall time per record for JSON Lines and for Parquet (records as JSON strings in
columns, and typed columns), bytes per record, and what importing pyarrow costs a server worker.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.benchmarks.serving_bench import BODY, make_model, median_result  # noqa: E402
from tests.benchmarks.serving_load import LoadResult, run_load  # noqa: E402
from tests.benchmarks.serving_procs import Server, free_port  # noqa: E402


def bentoml(model: Path, logs: Path, env: dict[str, str]) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bentoml", "serve", "serving.service:MlcloudService"]
    env = {"MLCLOUD_SERVE_MODEL": str(model), "BENTOML_DO_NOT_TRACK": "True", **env}
    server = Server([*argv, "--host", "127.0.0.1", "--port", str(port)], env, port, logs, REPO)
    server.wait_ready("/readyz", timeout=120)
    return server


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (the BentoML workers)."""
    import psutil  # type: ignore[import-untyped]

    total = 0.0
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def captured(directory: Path) -> tuple[int, int]:
    """(written, dropped) as the capture's stats files say."""
    written = dropped = 0
    for path in directory.glob("stats-*.json"):
        data = json.loads(path.read_text())
        written, dropped = written + data["written"], dropped + data["dropped"]
    return written, dropped


def serve_bench(args: argparse.Namespace) -> int:
    tool = "wrk" if shutil.which("wrk") else "python"
    print(f"load tool: {tool}; {args.duration}s per point, {args.rounds} rounds")
    runs: dict[str, dict[int, list[LoadResult]]] = {"off": {}, "capture": {}}
    cpu_us: dict[str, list[float]] = {"off": [], "capture": []}
    with tempfile.TemporaryDirectory(prefix="mlcloud-capture-bench-") as tmp:
        root = Path(tmp)
        model = make_model(root)
        capture_dir = root / "capture"
        live: list[Server] = []
        try:
            live.append(bentoml(model, root / "off.log", {}))
            env = {"MLCLOUD_CAPTURE_DIR": str(capture_dir), "MLCLOUD_CAPTURE_SAMPLE": "1.0"}
            if args.null:  # two identical servers: the noise floor of this machine now
                env = {}
            live.append(bentoml(model, root / "capture.log", env))
            targets = {"off": live[0].url("/predict"), "capture": live[1].url("/predict")}
            pids = {"off": live[0].proc.pid, "capture": live[1].proc.pid}
            for url in targets.values():
                run_load(url, BODY, 2, 1.0, tool)  # warm-up
            for i in range(args.rounds):
                order = list(targets) if i % 2 == 0 else list(reversed(targets))
                for c in args.concurrency:
                    for name in order:
                        before = tree_cpu(pids[name])
                        r = run_load(targets[name], BODY, c, args.duration, tool)
                        runs[name].setdefault(c, []).append(r)
                        used = tree_cpu(pids[name]) - before
                        cpu_us[name].append(used * 1e6 / max(1, r.requests))
            time.sleep(1.5)  # the writer's last flush and stats
            capture_dir.mkdir(exist_ok=True)
            written, dropped = captured(capture_dir)
            size = sum(p.stat().st_size for p in capture_dir.glob("capture-*.jsonl"))
        finally:
            for server in reversed(live):
                server.stop()
    results = {n: {c: median_result(rs) for c, rs in v.items()} for n, v in runs.items()}
    print(f"\n{'server':<8} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, by_conc in results.items():
        for c, r in by_conc.items():
            print(f"{name:<8} {c:>4} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6}")
    print("\nconc  capture/off req/s (target >= 0.95)  p99 capture/off (target <= 1.10)")
    for c in args.concurrency:
        on, off = results["capture"][c], results["off"][c]
        pairs = zip(runs["capture"][c], runs["off"][c], strict=True)
        ratios = [a.rps / b.rps for a, b in pairs]
        print(
            f"{c:<5} {on.rps / off.rps:>34.3f}  {on.p99_ms / off.p99_ms:>30.3f}   (per round: "
            f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f})"
        )
    on_cpu, off_cpu = (statistics.median(cpu_us[n]) for n in ("capture", "off"))
    print(f"server CPU per request (steadier than req/s on a shared machine): off {off_cpu:.0f} "
          f"us, capture {on_cpu:.0f} us ({on_cpu / off_cpu:.3f}x)")  # fmt: skip
    print(f"\ncaptured {written} records ({size / max(1, written):.0f} B each), dropped {dropped}")
    return 0


# ---- --format: the file format, measured in-process -------------------------------------------
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def format_bench(n: int, batch: int = 256) -> int:
    import os

    rec = {"ts": 1.7e9, "request_id": "0123456789abcdef0123456789abcdef", "version": "v1",
           "instances": [[5.1, 3.5, 1.4, 0.2]], "predictions": [0]}  # fmt: skip
    recs = [dict(rec, ts=1.7e9 + i) for i in range(n)]
    out = Path(tempfile.mkdtemp(prefix="mlcloud-capture-format-"))
    results: dict[str, tuple[float, float, float]] = {}

    def measure(name: str, write: object) -> None:
        cpu0, t0 = _cpu(), time.perf_counter()
        path = write()  # type: ignore[operator]
        cpu, wall = _cpu() - cpu0, time.perf_counter() - t0
        results[name] = (cpu / n * 1e6, wall / n * 1e6, os.path.getsize(path) / n)

    def jsonl() -> Path:
        path = out / "a.jsonl"
        with path.open("wb") as f:
            for i in range(0, n, batch):
                lines = [json.dumps(r, separators=(",", ":")) for r in recs[i : i + batch]]
                f.write(("\n".join(lines) + "\n").encode())
                f.flush()
        return path

    measure("jsonl", jsonl)
    started = time.perf_counter()
    import pyarrow as pa
    import pyarrow.parquet as pq

    import_ms = (time.perf_counter() - started) * 1e3

    def parquet_json_columns() -> Path:
        path = out / "b.parquet"
        schema = pa.schema([("ts", pa.float64()), ("request_id", pa.string()),
                            ("version", pa.string()), ("instances", pa.string()),
                            ("predictions", pa.string())])  # fmt: skip
        with pq.ParquetWriter(path, schema) as w:
            for i in range(0, n, batch):
                b = recs[i : i + batch]
                cols = {k: [r[k] for r in b] for k in ("ts", "request_id", "version")}
                cols["instances"] = [json.dumps(r["instances"]) for r in b]
                cols["predictions"] = [json.dumps(r["predictions"]) for r in b]
                w.write_table(pa.table(cols, schema=schema))
        return path

    def parquet_typed() -> Path:
        path = out / "c.parquet"
        schema = pa.schema([("ts", pa.float64()), ("request_id", pa.string()),
                            ("version", pa.string()),
                            ("instances", pa.list_(pa.list_(pa.float64()))),
                            ("predictions", pa.list_(pa.int64()))])  # fmt: skip
        with pq.ParquetWriter(path, schema) as w:
            for i in range(0, n, batch):
                w.write_table(pa.Table.from_pylist(recs[i : i + batch], schema=schema))
        return path

    measure("parquet (JSON in columns)", parquet_json_columns)
    measure("parquet (typed columns)", parquet_typed)
    shutil.rmtree(out, ignore_errors=True)
    # VmRSS, not ru_maxrss: a child inherits its parent's high-water mark across fork and exec
    rss = "int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    fresh = subprocess.run(
        [sys.executable, "-c", "import time;t=time.perf_counter();import pyarrow.parquet;"
         f"print((time.perf_counter()-t)*1e3, {rss})"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    base = subprocess.run(
        [sys.executable, "-c", f"print({rss})"], capture_output=True, text=True, check=True
    )
    ms, rss = fresh.stdout.split()
    added_mb = (int(rss) - int(base.stdout)) / 1024
    print(f"{n} iris records, batches of {batch} (the writer drains what is queued)")
    print(f"{'format':<28} {'CPU us/rec':>10} {'wall us/rec':>11} {'B/rec':>6}")
    for name, (cpu, wall, size) in results.items():
        print(f"{name:<28} {cpu:>10.2f} {wall:>11.2f} {size:>6.0f}")
    print(f"import pyarrow.parquet in a fresh process: {float(ms):.0f} ms, +{added_mb:.0f} MB RSS "
          f"(in this process: {import_ms:.0f} ms)")  # fmt: skip
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--format", action="store_true", help="the file format measurement")
    parser.add_argument("--null", action="store_true", help="A/A: neither server captures")
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    return format_bench(args.records) if args.format else serve_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
