"""The state store under 50 concurrent clients, on SQLite and on a real PostgreSQL.

Each client has its own Store (its own connection, as each server worker / CLI process has) and
runs ``--jobs`` rounds of: add a job, two updates (RUNNING with an event, then SUCCEEDED), one
get, one list of the newest 20. Reported per backend: operations per second over the whole run,
p50/p99 latency per operation, and the audit at the end: jobs lost (added but missing), jobs
duplicated, jobs not in their final state, events missing (every job must have exactly 3).

Clients are threads by default (a server's worker threads) or forked processes (``--processes``,
CLI invocations and job supervisors). PostgreSQL: a throwaway server from the machine's
``initdb``/``pg_ctl`` (tests/pg.py), or ``--url postgresql://...`` (an empty database).

Run: python tests/benchmarks/store_bench.py [--clients 50] [--jobs 20] [--processes]
     [--backends sqlite,postgresql] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mlcloud.records import JobRecord, JobState  # noqa: E402
from mlcloud.store import Store  # noqa: E402

OPS = ("add", "update", "get", "list")


def _client(locator: str, client: int, jobs: int, start: float) -> dict[str, list[float]]:
    """One client's rounds; returns its latencies (ms) per operation."""
    store = Store.at(locator)
    lat: dict[str, list[float]] = {op: [] for op in OPS}
    while time.time() < start:  # every client starts at once
        time.sleep(0.001)

    def timed(op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        lat[op].append((time.perf_counter() - t0) * 1000)
        return out

    for i in range(jobs):
        job_id = f"c{client:03d}-{i:04d}"
        record = JobRecord(job_id, "bench", "local", "local", JobState.PENDING, spec={"i": i})
        timed("add", store.add_job, record)
        timed("update", store.update_job, job_id, state=JobState.RUNNING, attempts=1,
              event="attempt 1 started")  # fmt: skip
        timed("update", store.update_job, job_id, state=JobState.SUCCEEDED, exit_code=0)
        timed("get", store.get_job, job_id)
        timed("list", store.list_jobs, limit=20)
    store.close()
    return lat


def _in_process(args: tuple[str, int, int, float], out: Any) -> None:
    out.put(_client(*args))


def run_clients(locator: str, clients: int, jobs: int, processes: bool) -> tuple[float, dict]:
    start = time.time() + (3.0 if processes else 0.5)
    results: list[dict[str, list[float]]] = []
    if processes:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_in_process, args=((locator, c, jobs, start), queue))
                 for c in range(clients)]  # fmt: skip
        for p in procs:
            p.start()
        results = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
    else:
        lock = threading.Lock()

        def work(c: int) -> None:
            lat = _client(locator, c, jobs, start)
            with lock:
                results.append(lat)

        threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elapsed = time.time() - start
    merged = {op: [x for r in results for x in r[op]] for op in OPS}
    return elapsed, merged


def audit(locator: str, clients: int, jobs: int) -> dict[str, int]:
    store = Store.at(locator)
    got = [r[0] for r in store._db.execute("SELECT id FROM jobs").fetchall()]
    expected = {f"c{c:03d}-{i:04d}" for c in range(clients) for i in range(jobs)}
    finals = store._db.execute(
        "SELECT COUNT(*) FROM jobs WHERE state = ? AND exit_code = 0", ("SUCCEEDED",)
    ).fetchone()[0]
    bad_events = store._db.execute(
        "SELECT COUNT(*) FROM (SELECT job_id FROM job_events GROUP BY job_id "
        "HAVING COUNT(*) <> 3) AS odd"
    ).fetchone()[0]
    store.close()
    return {
        "expected": len(expected),
        "lost": len(expected - set(got)),
        "duplicated": len(got) - len(set(got)),
        "not_final": len(expected) - finals,
        "jobs_with_wrong_event_count": bad_events,
    }


def _pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[q - 1], 2) if len(values) > 1 else 0.0


def bench(name: str, locator: str, args: argparse.Namespace) -> dict[str, Any]:
    Store.at(locator).close()  # created and migrated before the clock starts
    elapsed, lat = run_clients(locator, args.clients, args.jobs, args.processes)
    total = sum(len(v) for v in lat.values())
    result = {
        "backend": name,
        "clients": args.clients,
        "mode": "processes" if args.processes else "threads",
        "operations": total,
        "seconds": round(elapsed, 2),
        "ops_per_s": round(total / elapsed, 1),
        "jobs_per_s": round(args.clients * args.jobs / elapsed, 1),
        "latency_ms": {
            op: {"p50": _pct(v, 50), "p99": _pct(v, 99), "max": round(max(v), 2)}
            for op, v in lat.items()
        },
        "audit": audit(locator, args.clients, args.jobs),
    }
    print(json.dumps(result), flush=True)
    return result


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.pg import running_server

    with running_server() as server:
        yield server.create_database("bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=20, help="rounds per client")
    parser.add_argument("--processes", action="store_true", help="clients as forked processes")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--url", help="an empty PostgreSQL database to use")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as home:
            results.append(bench("sqlite", str(Path(home) / "state.db"), args))
    if "postgresql" in backends:
        with postgres(args.url) as url:
            results.append(bench("postgresql", url, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = [r["backend"] for r in results if any(r["audit"][k] for k in
              ("lost", "duplicated", "not_final", "jobs_with_wrong_event_count"))]  # fmt: skip
    sys.exit(f"records lost or duplicated on: {', '.join(failed)}" if failed else 0)


if __name__ == "__main__":
    main()
