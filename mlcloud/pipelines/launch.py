"""Starting a pipeline run: record it with its steps, then start its runner detached.

The runner is a process in its own session that outlives the caller (``mlcloud pipelines run``
returns at once). Where the caller is a single thread (the CLI, the standalone scheduler), the
runner is a double fork of it: the imports the caller already made are not paid again, which is
most of a short pipeline's overhead (tests/benchmarks/pipeline_bench.py). Elsewhere (a server's
threads: a fork would copy locks other threads hold) it is a fresh ``python -m mlcloud.pipelines``.
Either way the store is closed first (neither SQLite's nor libpq's state may cross a fork).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mlcloud import api
from mlcloud.pipelines import spec as pspec
from mlcloud.pipelines.runner import execute, pipelines_dir
from mlcloud.store import Store
from mlcloud.store import pipelines as db


def start(
    store: Store,
    data: dict[str, Any],
    provider: str | None = None,
    *,
    no_cache: bool = False,
    reason: str = "manual",
    firing: int | None = None,
) -> db.RunRow:
    """Record a run of the (loaded) pipeline ``data`` and spawn its runner."""
    pipeline = pspec.validate(data, "pipeline")
    if provider is not None:
        api.resolve_profile(provider)  # an unknown profile fails here, not in the runner
    now = time.time()
    run_id = f"{pipeline.name}-{secrets.token_hex(3)}"
    row = db.RunRow(
        run_id,
        pipeline.name,
        data,
        "PENDING",
        reason,
        now,
        now,
        provider=provider,
        no_cache=no_cache,
    )
    steps = [
        db.StepRow(run_id, s.name, s.kind, "WAITING", provider=s.provider) for s in pipeline.steps
    ]
    db.create_run(store, row, steps, firing)
    spawn(store, run_id)
    return db.get_run(store, run_id)


def spawn(store: Store, run_id: str) -> None:
    """The runner, in its own session (it outlives the caller), its output in the run's log."""
    log = pipelines_dir(store) / f"{run_id}.out"
    if hasattr(os, "fork") and threading.active_count() == 1 and os.environ.get(NO_FORK) != "1":
        _forked(store, run_id, log)
        return
    env = {**os.environ, "MLCLOUD_HOME": str(store.home)}
    with open(log, "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "mlcloud.pipelines", "run", run_id],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )


NO_FORK = "MLCLOUD_PIPELINES_NO_FORK"  # "1": always start a fresh interpreter


def _forked(store: Store, run_id: str, log: Path) -> None:
    """Double fork: the grandchild (own session, reparented to init) runs the run; the child
    exits at once and is reaped here, so no zombie is left to a long-lived caller."""
    Store.close_all()  # they reconnect when used again
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        _detach_stdio(log)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        state = execute(run_id)
        print(f"run {run_id}: {state}", flush=True)
    except BaseException:  # the grandchild must never return into the caller
        import traceback

        traceback.print_exc()
    finally:
        os._exit(0)


def _detach_stdio(log: Path) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
