"""Pipelines (issue 12) on the local provider, real processes:

* orchestration overhead of a 5-step chain of trivial jobs: the run's wall time (from
  ``pipelines.run`` to the run recorded as ended) minus the sum of its jobs' own run times (each
  job from its record's creation to its end event: the provider's launch is the job's, not the
  pipeline's). Target: at most 1 s in total.
* a cache hit: the unchanged pipeline run again (every step cached, no job started). Target 1 s.
* a data trigger's notice latency: a file changes under a watched directory; the time until the
  scheduler notices the new digest (target: within ``every`` + 1 s) and until it fires (after
  ``settle`` more).

    python tests/benchmarks/pipeline_bench.py [--rounds 3] [--sleep 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

STEP = "import os, time\ntime.sleep(float(os.environ['SLEEP']))\n"


def chain(project: Path, sleep: float, tag: str) -> Path:
    steps = []
    for i in range(5):
        step = {"name": f"s{i}", "job": {"name": f"s{i}", "command": ["python", "step.py"],
                                         "env": {"SLEEP": str(sleep), "TAG": tag}}}  # fmt: skip
        if i:
            step["needs"] = [f"s{i - 1}"]
        steps.append(step)
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "bench", "steps": steps}))
    return path


def job_seconds(job_id: str) -> float:
    from mlcloud import api

    handle = api.job(job_id)
    end = max(e["ts"] for e in handle.events() if e["state"] == "SUCCEEDED")
    return float(end - handle.record.created_at)


def timed_run(path: Path) -> tuple[float, object]:
    from mlcloud import pipelines as pl

    began = time.time()
    run = pl.wait(pl.run(path).id, timeout=300, poll=0.02)
    assert run.state == "SUCCEEDED", pl.describe(run)
    return float((run.ended_at or time.time()) - began), run


def overhead(project: Path, sleep: float, rounds: int) -> dict[str, object]:
    rows = []
    for r in range(rounds):
        wall, run = timed_run(chain(project, sleep, f"round-{r}"))
        own = sum(job_seconds(str(s.job_id)) for s in run.steps)  # type: ignore[attr-defined]
        rows.append({"wall_s": wall, "jobs_s": own, "overhead_s": wall - own})
    return {"rounds": rows,
            "median_overhead_s": statistics.median(r["overhead_s"] for r in rows)}  # fmt: skip


def cache_hit(project: Path, rounds: int) -> dict[str, object]:
    from mlcloud import api

    path = chain(project, 0.1, "cached")
    timed_run(path)
    jobs = len(api.list_jobs(limit=100_000))
    times = []
    for _ in range(rounds):
        wall, run = timed_run(path)
        assert all(s.cached for s in run.steps)  # type: ignore[attr-defined]
        times.append(wall)
    assert len(api.list_jobs(limit=100_000)) == jobs, "a cached rerun started a job"
    return {"rerun_s": times, "median_s": statistics.median(times)}


def data_trigger(project: Path, rounds: int, every: int = 1) -> dict[str, object]:
    from mlcloud import pipelines as pl
    from mlcloud.store import Store
    from mlcloud.store import pipelines as db

    data = project / "data"
    data.mkdir()
    (data / "x.csv").write_text("0\n")
    spec = {"name": "watch", "steps": [{"name": "ok", "condition": "1 > 0"}],
            "triggers": [{"data": str(data), "every": f"{every}s", "settle": "1s"}]}  # fmt: skip
    path = project / "watch.yaml"
    path.write_text(yaml.safe_dump(spec))
    pl.schedule(path)
    scheduler = subprocess.Popen([sys.executable, "-m", "mlcloud.cli", "scheduler",
                                  "--interval", "0.05"])  # fmt: skip
    store = Store.open()
    notice, fire = [], []
    try:
        time.sleep(1.5)
        for r in range(rounds):
            time.sleep(every * (r + 1) / (rounds + 1))  # at different points of the interval
            wrote = time.time()
            (data / "x.csv").write_text(f"{r + 1}\n")
            while len(db.firings(store, "watch")) < r + 1:
                time.sleep(0.01)
            fired = db.firings(store, "watch")[-1]
            state = db.trigger_states(store, "watch")[0]
            notice.append(float(state["noticed_at"]) - wrote)
            fire.append(fired.at - wrote)
    finally:
        scheduler.send_signal(signal.SIGINT)
        scheduler.wait(10)
    return {"every_s": every, "settle_s": 1, "notice_s": notice, "fire_s": fire,
            "max_notice_s": max(notice)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    os.environ["MLCLOUD_HOME"] = str(home / "home")
    project = home / "project"
    project.mkdir()
    (project / "step.py").write_text(STEP)
    result = {
        "overhead": overhead(project, args.sleep, args.rounds),
        "cache_hit": cache_hit(project, args.rounds),
        "data_trigger": data_trigger(project, args.rounds),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
