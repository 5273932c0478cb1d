"""Ray Serve vs the BentoML local endpoint on the same iris model, same machine, same run.

Both are mlcloud's own deploy paths with their defaults: ``LocalProvider.deploy`` (the front
and one ``bentoml serve`` server) and ``RayProvider.deploy`` on the single-machine cluster
mlcloud starts (one Serve replica behind the Serve proxy). Both serve ``serving.app``'s
``/predict`` with ``serving.loaders``, one replica / worker each. Everything runs inside a
network namespace with only loopback (Ray's listeners bind every interface; root needed).

Load: wrk when installed (``apt-get install -y wrk``), else a bounded Python loop. Per point
``--duration`` seconds, rounds interleaved (median reported), concurrency 1/8/32 by default.

    python tests/benchmarks/ray_serve_vs_bentoml.py [--duration 5] [--rounds 2] [--json out]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.serving_bench import BODY, make_model, median_result  # noqa: E402
from tests.benchmarks.serving_load import LoadResult, run_load  # noqa: E402


def _deploy(provider: Any, model: Path, name: str) -> tuple[str, float]:
    from mlcloud.specs import Deployment

    started = time.perf_counter()
    record = provider.deploy(provider.plan_deploy(Deployment(name=name, model=str(model))))
    return f"{record.url}/predict", time.perf_counter() - started


def _measure(
    urls: dict[str, str], concurrency: list[int], duration: float, rounds: int, tool: str
) -> dict[str, dict[int, LoadResult]]:
    runs: dict[str, dict[int, list[LoadResult]]] = {}
    for url in urls.values():
        run_load(url, BODY, 2, 1.0, tool)  # warm-up
    for _ in range(rounds):  # interleaved: the machine's drift hits both alike
        for c in concurrency:
            for name, url in urls.items():
                result = run_load(url, BODY, c, duration, tool)
                line = f"{result.rps:.0f} req/s, p99 {result.p99_ms:.1f} ms"
                print(f"  {name} c={c}: {line}", flush=True)
                runs.setdefault(name, {}).setdefault(c, []).append(result)
    return {n: {c: median_result(rs) for c, rs in v.items()} for n, v in runs.items()}


def _report(results: dict[str, dict[int, LoadResult]], ready_s: dict[str, float]) -> None:
    print(f"\n{'endpoint':<14} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, by_conc in results.items():
        for c, r in by_conc.items():
            row = f"{r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6}"
            print(f"{name:<14} {c:>4} {row}")
    print("\nconc   req/s ray/bentoml   p99 ray/bentoml")
    for c, r in results["ray-serve"].items():
        b = results["bentoml"][c]
        print(f"{c:<6} {r.rps / b.rps:>17.2f} {r.p99_ms / b.p99_ms:>17.2f}")
    print("\ndeploy to ready (s): " + ", ".join(f"{n} {s:.1f}" for n, s in ready_s.items()))


def main() -> int:
    from mlcloud.config import Profile
    from mlcloud.store import Store
    from providers.local.provider import LocalProvider
    from providers.ray.provider import RayProvider
    from tests.providers.ray.netns import LoopbackNamespace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "python"
    print(f"load tool: {tool}; {args.duration}s per point; cpus {os.cpu_count()}", flush=True)

    home = Path(tempfile.mkdtemp(prefix="mlcloud-bench-"))
    os.environ["MLCLOUD_HOME"] = str(home)
    temp_dir = tempfile.mkdtemp(prefix="mlc-ray-", dir="/tmp")  # short: Ray's sockets
    model = make_model(home)
    store = Store.open(home)
    local = LocalProvider(Profile("local", "local"), store)
    ray = RayProvider(Profile("ray", "ray", {"temp_dir": temp_dir}), store)
    with LoopbackNamespace():
        urls: dict[str, str] = {}
        ready_s: dict[str, float] = {}
        try:
            urls["bentoml"], ready_s["bentoml"] = _deploy(local, model, "bench-bento")
            ray.clients.jobs  # noqa: B018 (starts the cluster, as a first command does)
            urls["ray-serve"], ready_s["ray-serve"] = _deploy(ray, model, "bench-ray")
            results = _measure(urls, args.concurrency, args.duration, args.rounds, tool)
        finally:
            for provider, name in ((local, "bench-bento"), (ray, "bench-ray")):
                provider.undeploy(name)
            ray.clients.cluster.stop(grace=2)
            shutil.rmtree(temp_dir, ignore_errors=True)
    _report(results, ready_s)
    if args.json:
        data = {n: {c: r.__dict__ for c, r in v.items()} for n, v in results.items()}
        args.json.write_text(json.dumps({"tool": tool, "results": data}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
