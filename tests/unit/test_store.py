"""The state store on both backends (SQLite, a real PostgreSQL: ``store_backend``): round trips,
concurrent writer processes, and no corruption when a writer is killed."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlcloud.errors import NotFoundLocally
from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState
from mlcloud.store import Store


def _job(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, name="n", provider="local", type="local", state=JobState.PENDING)


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    (mode,) = store._db.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


def test_roundtrip(store_backend: str) -> None:
    store = Store.open()
    assert store.backend == store_backend
    store.add_job(_job("a-1"))
    store.update_job("a-1", state=JobState.RUNNING, attempts=1, merge_outputs={"model_dir": "/m"})
    got = store.get_job("a-1")
    assert got.state is JobState.RUNNING and got.outputs == {"model_dir": "/m"}
    assert [e["state"] for e in store.job_events("a-1")] == ["PENDING", "RUNNING"]
    with pytest.raises(NotFoundLocally):
        store.get_job("nope")


def test_terminal_state_is_sticky(store_backend: str) -> None:
    store = Store.open()
    store.add_job(_job("a-1"))
    store.update_job("a-1", state=JobState.CANCELLED)
    assert store.update_job("a-1", state=JobState.RUNNING).state is JobState.CANCELLED


def test_endpoints_and_models(store_backend: str) -> None:
    store = Store.open()
    store.put_endpoint(EndpointRecord("iris", "local", "local", EndpointState.READY, url="u"))
    assert store.get_endpoint("iris").url == "u"
    store.put_endpoint(EndpointRecord("iris", "aws", "sagemaker", EndpointState.READY))
    with pytest.raises(Exception, match="several providers"):
        store.get_endpoint("iris")
    store.put_endpoint(EndpointRecord("iris", "aws", "sagemaker", EndpointState.FAILED))  # replaced
    assert store.get_endpoint("iris", "aws").state is EndpointState.FAILED
    store.delete_endpoint("iris", "aws")
    assert [e.name for e in store.list_endpoints()] == ["iris"]
    assert store.add_model_version("iris", "/m1") == 1
    assert store.add_model_version("iris", "/m2", source_job="j") == 2
    assert [m["version"] for m in store.list_models("iris")] == [1, 2]


def _hammer(locator: str, worker: int, count: int) -> None:
    store = Store.at(locator)
    for i in range(count):
        store.add_job(_job(f"w{worker}-{i}"))
        store.update_job(f"w{worker}-{i}", state=JobState.RUNNING, event="tick")
    store.close()


def test_concurrent_writers(store_backend: str) -> None:
    store = Store.open()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(store.locator, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(store.list_jobs(limit=1000)) == 160
    assert all(j.state is JobState.RUNNING for j in store.list_jobs(limit=1000))


def test_killed_writer_leaves_no_corruption(store_backend: str) -> None:
    store = Store.open()
    code = (
        "import sys; from pathlib import Path; from tests.unit.test_store import _hammer; "
        f"_hammer({store.locator!r}, 9, 100000)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until it is mid-stream
        if len(store.list_jobs(limit=50)) >= 20:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if store_backend == "sqlite":
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = Store.open()
    assert store.list_jobs(limit=100000)
    # each add is one transaction: no job without its first event, however the writer died
    (orphans,) = store._db.execute(
        "SELECT COUNT(*) FROM jobs WHERE NOT EXISTS "
        "(SELECT 1 FROM job_events e WHERE e.job_id = jobs.id)"
    ).fetchone()
    assert orphans == 0
    started = time.monotonic()
    store.add_job(_job("after-kill"))  # the dead writer's lock went with it: no wait
    assert time.monotonic() - started < 5
