"""The control-plane API under load: 50 concurrent clients submit 1,000 dry-run plans, then 200
real local jobs, through a real ``mlcloud server`` on SQLite and on PostgreSQL; throughput,
latency percentiles, and an audit of the store afterwards (0 lost, 0 duplicated records).

PostgreSQL comes from the machine's own ``initdb``/``pg_ctl`` (tests/pg.py) unless ``--url``
names an empty database; without them that backend is reported as skipped.

Run: python tests/benchmarks/server_api_bench.py [--clients 50 --plans 1000 --jobs 200]
     [--workers 2] [--backends sqlite,postgresql] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.server.serverproc import start_server  # noqa: E402

MLCLOUD = [sys.executable, "-m", "mlcloud.cli"]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 2)


async def _load(url: str, token: str, clients: int, total: int, body: dict[str, Any],
                dry_run: bool) -> dict[str, Any]:  # fmt: skip
    """``clients`` concurrent clients sharing ``total`` submits; latencies and answers."""
    latencies: list[float] = []
    ids: list[str] = []
    failures: list[str] = []
    per_client = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    params = {"dry_run": "true"} if dry_run else {}

    async def client(count: int) -> None:
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            for _ in range(count):
                start = time.perf_counter()
                answer = await http.post("/v1/jobs", params=params, json=body)
                latencies.append((time.perf_counter() - start) * 1000)
                if answer.status_code not in (200, 201):
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
                elif not dry_run:
                    ids.append(answer.json()["id"])

    start = time.perf_counter()
    await asyncio.gather(*(client(n) for n in per_client))
    elapsed = time.perf_counter() - start
    return {
        "requests": total,
        "seconds": round(elapsed, 2),
        "per_second": round(total / elapsed, 1),
        "p50_ms": _pct(latencies, 50),
        "p99_ms": _pct(latencies, 99),
        "max_ms": round(max(latencies), 2),
        "failures": failures[:5],
        "failed": len(failures),
        "ids": ids,
    }


def _wait_all(http: httpx.Client, ids: list[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        listed = http.get("/v1/jobs", params={"limit": 100_000}).json()
        states = {r["id"]: r["state"] for r in listed if r["id"] in set(ids)}
        done = [s for s in states.values() if s in ("SUCCEEDED", "FAILED", "CANCELLED")]
        if len(done) == len(ids) or time.monotonic() > deadline:
            counts: dict[str, int] = {}
            for state in states.values():
                counts[state] = counts.get(state, 0) + 1
            return counts
        time.sleep(1.0)


def bench(
    backend: str, home: Path, env: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    environ = {**os.environ, **env, "MLCLOUD_HOME": str(home)}
    made = subprocess.run([*MLCLOUD, "tokens", "create", "bench", "--role", "admin"], env=environ,
                          capture_output=True, text=True, check=True)  # fmt: skip
    token = made.stdout.strip()
    work = home / "job"
    work.mkdir(parents=True)
    (work / "main.py").write_text("print('done')\n")
    body = {"name": "bench", "source": str(work), "command": [sys.executable, "main.py"]}
    server = start_server(home, "--workers", str(args.workers), env=env)
    try:
        # warm-up (not measured): every worker imports the provider and plans once
        asyncio.run(_load(server.url, token, 4 * args.workers, 8 * args.workers, body, True))
        plans = asyncio.run(_load(server.url, token, args.clients, args.plans, body, True))
        jobs = asyncio.run(_load(server.url, token, args.clients, args.jobs, body, False))
        with server.client(token) as http:
            states = _wait_all(http, jobs["ids"], args.timeout)
            listed = [r["id"] for r in http.get("/v1/jobs", params={"limit": 100_000}).json()]
    finally:
        server.stop()
    ids = jobs.pop("ids")
    plans.pop("ids")
    # the same requests timed inside the server (its access log), without the client's share
    # of a shared machine's CPU: POSTs in the order they ended (the phases ran one after another)
    posts = [json.loads(x) for x in server.log_text().splitlines() if '"path": "/v1/jobs"' in x]
    posts = sorted((p for p in posts if p.get("method") == "POST"), key=lambda p: p["ts"])
    warm = 8 * args.workers
    for phase, part in (
        (plans, posts[warm : warm + args.plans]),
        (jobs, posts[warm + args.plans :]),
    ):
        inside = [p["ms"] for p in part]
        phase["server_p50_ms"], phase["server_p99_ms"] = _pct(inside, 50), _pct(inside, 99)
    audit = {
        "submitted": len(ids),
        "lost": len(set(ids) - set(listed)),
        "duplicated": len(ids) - len(set(ids)) + len(listed) - len(set(listed)),
        "unexpected": len(set(listed) - set(ids)),  # dry-runs must have made no record
        "states": states,
    }
    result = {"backend": backend, "workers": args.workers, "clients": args.clients,
              "dry_run_plans": plans, "real_jobs": jobs, "audit": audit}  # fmt: skip
    print(json.dumps(result), flush=True)
    return result


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.pg import running_server

    with running_server() as server:
        yield server.create_database("serverbench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--plans", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600, help="for the jobs to finish")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--url", help="an empty PostgreSQL database to use")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as home:
            results.append(bench("sqlite", Path(home), {}, args))
    if "postgresql" in backends:
        try:
            with postgres(args.url) as url, tempfile.TemporaryDirectory() as home:
                results.append(bench("postgresql", Path(home),
                                     {"MLCLOUD_DATABASE_URL": url}, args))  # fmt: skip
        except RuntimeError as e:  # tests.pg.PgUnavailable: no binaries or psycopg
            print(json.dumps({"backend": "postgresql", "skipped": str(e)}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    bad = [r["backend"] for r in results
           if r["audit"]["lost"] or r["audit"]["duplicated"] or r["audit"]["unexpected"]
           or r["real_jobs"]["failed"] or r["dry_run_plans"]["failed"]]  # fmt: skip
    sys.exit(f"records lost, duplicated or failed on: {', '.join(bad)}" if bad else 0)


if __name__ == "__main__":
    main()
