"""Gateway benchmark: predict through ``mlcloud server``'s gateway vs directly to the same local
endpoint (its front), in the same run.

Run as a script (never collected by pytest)::

    python tests/benchmarks/gateway_bench.py [--duration 5] [--concurrency 1 8 32] [--rounds 3]
        [--workers 1] [--baseline DIR]

A real local endpoint (the iris model behind its front and BentoML server) and a real
``mlcloud server`` (uvicorn; httptools/uvloop when installed), both on 127.0.0.1, under a temp
MLCLOUD_HOME. Rounds are interleaved (direct, gateway, direct, ...) and the medians reported,
with the CPU the front (direct) and the server (gateway) spent per request: the overhead that
does not depend on how busy the machine is. The gateway sends a local endpoint's predictions
straight to its model servers (``providers/local/direct_route.py``); ``MLCLOUD_GATEWAY_DIRECT=0``
in the environment measures the path through the front instead.
Load comes from wrk (one thread), else a bounded Python loop. Prints req/s for both, the ratio
gateway/direct per concurrency (target >= 0.85) and the latency the gateway adds at p50/p99.
``--baseline DIR``: a second gateway started from another checkout (e.g. ``git archive HEAD |
tar -x -C DIR``), measured in the same interleaved rounds against the same front, so a change's
effect shows even on a busy machine (its ratio and CPU per request in the last columns).
Bounded: concurrency levels x rounds x 2 (3 with a baseline) x duration seconds, plus start-up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.benchmarks.serving_bench import BODY, make_model, median_result  # noqa: E402
from tests.benchmarks.serving_load import LoadResult, run_load  # noqa: E402
from tests.benchmarks.serving_procs import Server, free_port  # noqa: E402


def deploy(home: Path) -> tuple[str, int]:
    """A local endpoint of the iris model (loopback: no token): its front's URL and pid."""
    from mlcloud.config import Profile
    from mlcloud.specs import Deployment
    from mlcloud.store import Store
    from providers.local.provider import LocalProvider

    model = make_model(home / "models")
    provider = LocalProvider(Profile("local", "local"), Store.open(home))
    record = provider.deploy(provider.plan_deploy(Deployment(name="iris", model=str(model))))
    assert record.url, record
    return record.url, int(record.details["front"]["pid"])


def cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children (uvicorn workers)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def measured(url: str, conc: int, duration: float, tool: str, pid: int) -> tuple[LoadResult, float]:
    """The load result and the CPU milliseconds ``pid`` spent per request."""
    before = cpu_s(pid)
    result = run_load(url, BODY, conc, duration, tool)
    return result, (cpu_s(pid) - before) * 1000 / max(1, result.requests)


def gateway(home: Path, workers: int, tree: Path = REPO) -> Server:
    """``mlcloud server`` started from ``tree`` (``-m`` puts its directory first on the path)."""
    port = free_port()
    argv = [sys.executable, "-m", "mlcloud.cli", "server", "--port", str(port),
            "--workers", str(workers), "--predict-rate", "1000000",
            "--log-level", "warning"]  # fmt: skip
    server = Server(argv, {"MLCLOUD_HOME": str(home)}, port, home / f"server-{port}.log", tree)
    server.wait_ready("/healthz", timeout=60)
    return server


Row = tuple[int, dict[str, LoadResult], dict[str, float]]  # conc, results and CPU ms/req by path


def table(rows: list[Row]) -> str:
    head = (
        f"{'conc':>4}  {'direct req/s':>12}  {'gateway req/s':>13}  {'ratio':>5}  "
        f"{'direct p50/p99 ms':>17}  {'gateway p50/p99 ms':>18}  {'added p50/p99 ms':>16}  "
        f"cpu ms/req front/gateway  errors"
    )
    baseline = any("baseline" in r for _, r, _ in rows)
    if baseline:
        head += "  baseline: ratio  cpu ms/req"
    lines = [head, "-" * len(head)]
    for conc, r, cpu in rows:
        d, g = r["direct"], r["gateway"]
        line = (
            f"{conc:>4}  {d.rps:>12.0f}  {g.rps:>13.0f}  {g.rps / d.rps:>5.2f}  "
            f"{d.p50_ms:>7.2f} / {d.p99_ms:<7.2f}  {g.p50_ms:>8.2f} / {g.p99_ms:<7.2f}  "
            f"{g.p50_ms - d.p50_ms:>+6.2f} / {g.p99_ms - d.p99_ms:<+7.2f}  "
            f"{cpu['direct']:>12.2f} / {cpu['gateway']:<10.2f}  {d.errors}/{g.errors}"
        )
        if baseline:
            b = r["baseline"]
            line += f"  {b.rps / d.rps:>15.2f}  {cpu['baseline']:>10.2f}  ({b.errors} errors)"
        lines.append(line)
    return "\n".join(lines)


def measure_all(
    urls: dict[str, str], pids: dict[str, int], conc: int, args: argparse.Namespace, tool: str
) -> Row:
    """``args.rounds`` interleaved rounds of every path; the medians."""
    runs: dict[str, list[LoadResult]] = {path: [] for path in urls}
    cpus: dict[str, list[float]] = {path: [] for path in urls}
    for _ in range(args.rounds):
        for path, url in urls.items():
            result, cpu = measured(url, conc, args.duration, tool, pids[path])
            runs[path].append(result)
            cpus[path].append(cpu)
    medians = {path: median_result(results) for path, results in runs.items()}
    return conc, medians, {path: statistics.median(c) for path, c in cpus.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="the server's uvicorn workers")
    parser.add_argument("--baseline", type=Path, help="another checkout's gateway, for comparison")
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "python"
    home = Path(tempfile.mkdtemp(prefix="mlcloud-gw-bench-"))
    os.environ["MLCLOUD_HOME"] = str(home)
    os.environ["MLCLOUD_DEPLOY_TIMEOUT"] = "180"
    servers: dict[str, Server] = {}
    try:
        front, front_pid = deploy(home)
        servers["gateway"] = gateway(home, args.workers)
        if args.baseline:
            servers["baseline"] = gateway(home, args.workers, args.baseline.resolve())
        urls = {"direct": f"{front}/predict"}
        pids = {"direct": front_pid}
        for path, server in servers.items():
            urls[path] = server.url("/v1/endpoints/iris:predict")
            pids[path] = server.proc.pid
        for url in urls.values():  # warm every path (connections, model, caches)
            run_load(url, BODY, 4, 1.0, tool)
        rows = [measure_all(urls, pids, conc, args, tool) for conc in args.concurrency]
        print(f"load: {tool}; {args.rounds} round(s) of {args.duration:g}s each; "
              f"server workers: {args.workers}; medians")  # fmt: skip
        print(table(rows))
    finally:
        for server in servers.values():
            server.stop()
        from providers.local import endpoint_procs

        endpoint_procs.stop([], endpoint_procs.home_tag(home))
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
