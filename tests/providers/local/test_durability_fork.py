"""Submitting from a process that holds other SQLite connections (a notebook with two stores,
the pipeline runner, a user's own ``sqlite3.connect``): every job still runs.

The supervisor is forked from a single-threaded caller. SQLite keeps per-process bookkeeping of
the files it has open (locks, descriptors); a child that opens a database its parent still has
open inherits that bookkeeping and closes or locks the wrong descriptors ("disk I/O error").
So every connection a Store made is closed before the fork, even one whose Store was dropped
without closing (its statement cache keeps it alive until the cyclic GC runs), and a caller
holding a connection mlcloud did not make gets a fresh interpreter instead of a fork.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import sys
import time
from pathlib import Path

import psutil

from mlcloud.config import Profile
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider, supervisor
from tests.single_threaded import in_fresh_interpreter


def _run_three(tmp_path: Path) -> list[tuple[JobState, bool]]:
    """Three jobs, each from a new provider on a new Store never closed (as the elastic
    benchmark does): (final state, whether its supervisor was forked)."""
    (tmp_path / "main.py").write_text("import time; time.sleep(0.5)")  # alive when looked at
    job = TrainingJob(name="f", source=str(tmp_path), command=[sys.executable, "main.py"])
    results = []
    for _ in range(3):
        provider = LocalProvider(Profile("local", "local"), Store.open())
        record = provider.submit_job(provider.plan_job(job))
        # A forked supervisor was double-forked away; a fresh interpreter is our child.
        forked = psutil.Process(record.details["supervisor"]["pid"]).ppid() != os.getpid()
        deadline = time.monotonic() + 60
        while not (state := provider.job_status(record.id).state).terminal:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        results.append((state, forked))
    return results


def test_stores_left_open_are_closed_before_the_fork(tmp_path: Path) -> None:
    # a fresh interpreter: this one may hold session servers' threads (then it never forks)
    assert (
        in_fresh_interpreter(_dropped_store_then_three_jobs, tmp_path)
        == [(JobState.SUCCEEDED, True)] * 3
    )  # still the fast fork


def _dropped_store_then_three_jobs(tmp_path: Path) -> list[tuple[JobState, bool]]:
    gc.disable()  # a dropped Store's connection stays alive, as it may between GC runs
    dropped = Store.open()
    dropped.list_jobs()
    dropped._conn = None  # the Store forgets its connection; the connection lives on
    assert supervisor.sqlite_open()
    return _run_three(tmp_path)


def test_a_connection_mlcloud_did_not_make_means_no_fork(tmp_path: Path) -> None:
    own = sqlite3.connect(Store.open().path)  # the user's own connection to the store
    own.execute("SELECT COUNT(*) FROM jobs").fetchone()
    try:
        assert _run_three(tmp_path) == [(JobState.SUCCEEDED, False)] * 3
    finally:
        own.close()
