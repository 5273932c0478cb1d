"""Front benchmark: a local endpoint's front (the proxy) vs its BentoML server directly.

Run as a script (never collected by pytest)::

    python tests/benchmarks/front_bench.py [--duration 5] [--concurrency 1 8 32] [--rounds 3]
        [--split] [--ab] [--baseline DIR]

``--baseline DIR``: also a front run from another checkout (``git archive HEAD | tar -x -C
DIR``), measured in the same run: a before/after that the machine's noise hits alike.

Same iris model, same machine, same run, interleaved rounds (medians). The front routes by
weight as a canary deploy leaves it (``--split``: a second BentoML server as a canary at 10%,
so the routing itself is measured; without it the front has one version at 100%). Load comes
from wrk (``apt-get install -y wrk``), else a bounded Python loop. Prints req/s, p50/p99 and
the ratio front/direct per concurrency (target >= 0.9), and the front's own /-/stats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.benchmarks.serving_bench import BODY, make_model, median_result  # noqa: E402
from tests.benchmarks.serving_load import LoadResult, run_load  # noqa: E402
from tests.benchmarks.serving_procs import Server, free_port  # noqa: E402


def bentoml(model: Path, logs: Path) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bentoml", "serve", "serving.service:MlcloudService"]
    env = {"MLCLOUD_SERVE_MODEL": str(model), "BENTOML_DO_NOT_TRACK": "True"}
    server = Server([*argv, "--host", "127.0.0.1", "--port", str(port)], env, port, logs, REPO)
    server.wait_ready("/readyz", timeout=120)
    return server


def front(
    state: Path, versions: dict[str, tuple[int, str]], env: dict[str, str], cwd: Path = REPO
) -> Server:
    from providers.local.front import CONTROL_PATH, write_upstreams

    urls = [url for _, url in versions.values()]
    split = {vid: {"weight": w, "upstreams": [url]} for vid, (w, url) in versions.items()}
    write_upstreams(state, 1, urls, versions=split)
    port = free_port()
    argv = [sys.executable, "-m", "providers.local.front", "--port", str(port),
            "--state-dir", str(state), "--log-file", str(state / "front.log")]  # fmt: skip
    server = Server(argv, env, port, state / "front.out", cwd)
    server.wait_ready(CONTROL_PATH, timeout=30)
    return server


def _cpu(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--split", action="store_true", help="a 90/10 canary split")
    parser.add_argument(
        "--ab", action="store_true", help="also a front with aiohttp's client (the A/B)"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout's front, as 'before'")
    args = parser.parse_args()
    tool = "wrk" if shutil.which("wrk") else "python"
    print(f"load tool: {tool}; {args.duration}s per point, {args.rounds} rounds")
    cpu_us: dict[str, dict[int, list[float]]] = {}
    names = ("direct", "front", "front-aiohttp", "front-before")
    runs: dict[str, dict[int, list[LoadResult]]] = {name: {} for name in names}
    with tempfile.TemporaryDirectory(prefix="mlcloud-front-bench-") as tmp:
        root = Path(tmp)
        model = make_model(root)
        live: list[Server] = []
        try:
            stable = bentoml(model, root / "stable.log")
            live.append(stable)
            versions = {"v1": (100, stable.url(""))}
            if args.split:
                canary = bentoml(model, root / "canary.log")
                live.append(canary)
                versions = {"v1": (90, stable.url("")), "v2": (10, canary.url(""))}
            proxy = front(root, versions, {})
            live.append(proxy)
            targets = {"direct": stable.url("/predict"), "front": proxy.url("/predict")}
            procs = {"front": proxy.proc.pid}
            if args.ab:
                other = root / "aiohttp-client"
                other.mkdir()
                ab = front(other, versions, {"MLCLOUD_FRONT_CLIENT": "aiohttp"})
                live.append(ab)
                targets["front-aiohttp"] = ab.url("/predict")
                procs["front-aiohttp"] = ab.proc.pid
            if args.baseline:
                before_dir = root / "before"
                before_dir.mkdir()
                old = front(before_dir, versions, {}, cwd=args.baseline.resolve())
                live.append(old)
                targets["front-before"] = old.url("/predict")
                procs["front-before"] = old.proc.pid
            for url in targets.values():
                run_load(url, BODY, 2, 1.0, tool)  # warm-up
            for _ in range(args.rounds):
                for c in args.concurrency:
                    for name, url in targets.items():
                        before = _cpu(procs.get(name))
                        r = run_load(url, BODY, c, args.duration, tool)
                        runs[name].setdefault(c, []).append(r)
                        if name in procs:
                            used = _cpu(procs[name]) - before
                            per_request = used * 1e6 / max(1, r.requests)
                            cpu_us.setdefault(name, {}).setdefault(c, []).append(per_request)
            with urllib.request.urlopen(proxy.url("/-/stats"), timeout=5) as resp:
                stats = json.loads(resp.read())
        finally:
            for server in reversed(live):
                server.stop()
    results = {n: {c: median_result(rs) for c, rs in v.items()} for n, v in runs.items() if v}
    print(f"\n{'target':<13} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for name, by_conc in results.items():
        for c, r in by_conc.items():
            print(
                f"{name:<13} {c:>4} {r.rps:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.errors:>6}"
            )
    for name in [n for n in results if n != "direct"]:
        print(f"\nconc  {name}/direct req/s  added p50 ms  added p99 ms")
        for c in args.concurrency:
            f, d = results[name][c], results["direct"][c]
            pairs = zip(runs[name][c], runs["direct"][c], strict=True)
            ratios = [a.rps / b.rps for a, b in pairs]
            print(
                f"{c:<5} {f.rps / d.rps:>19.2f} {f.p50_ms - d.p50_ms:>12.2f} "
                f"{f.p99_ms - d.p99_ms:>13.2f}   (per round: "
                f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f})"
            )
    for name, by_c in cpu_us.items():
        each = ", ".join(f"c={c}: {statistics.median(v):.0f}" for c, v in by_c.items())
        print(f"{name}: CPU us per proxied request (median) {each} (the front's own cost; "
              "steadier than req/s on a shared machine)")  # fmt: skip
    share = {v: s["requests"] for v, s in stats["versions"].items()}
    print(f"\nfront /-/stats requests per version: {share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
