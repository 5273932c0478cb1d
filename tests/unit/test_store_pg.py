"""The PostgreSQL backend, against a real server (tests/pg.py): many writer processes, the SQLite
dialect it speaks, credentials it never shows, and the SQLite-only features it refuses clearly."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from mlcloud.errors import ConfigError, UnsupportedFeature
from mlcloud.records import JobRecord, JobState
from mlcloud.store import Store, pg, recover
from tests.conftest import MLCLOUD, REPO, cli_env
from tests.pg import PG_PASSWORD, PgServer

WORKERS, JOBS = 16, 25


def _job(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, name="n", provider="local", type="local", state=JobState.PENDING)


def _worker(locator: str, worker: int) -> None:
    """Add jobs, move each through two states, and register model versions of one shared name:
    the version number is a read-modify-write inside one transaction."""
    store = Store.at(locator)
    for i in range(JOBS):
        job_id = f"w{worker:02d}-{i:03d}"
        store.add_job(_job(job_id))
        store.update_job(job_id, state=JobState.RUNNING, attempts=1, event="attempt 1")
        store.update_job(job_id, merge_outputs={f"by-{worker}": str(i)})
        store.update_job(job_id, state=JobState.SUCCEEDED, exit_code=0)
        store.add_model_version("shared", f"/m/{job_id}", source_job=job_id)
    store.close()


def test_many_processes_lose_and_duplicate_nothing(pg_url: str) -> None:
    """16 processes write at once: every job exactly once, in its final state with all its
    events; model versions 1..N with no number taken twice (the write lock serialises)."""
    store = Store.at(pg_url)
    ctx = multiprocessing.get_context("fork")  # all start together: the most contention
    procs = [ctx.Process(target=_worker, args=(store.locator, w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    jobs = store.list_jobs(limit=10_000)
    assert len(jobs) == len({j.id for j in jobs}) == WORKERS * JOBS
    assert all(j.state is JobState.SUCCEEDED and len(j.outputs) == 1 for j in jobs)
    (events,) = store._db.execute("SELECT COUNT(*) FROM job_events").fetchone()
    assert events == WORKERS * JOBS * 3  # PENDING, RUNNING, SUCCEEDED
    versions = [m["version"] for m in store.list_models("shared")]
    assert versions == list(range(1, WORKERS * JOBS + 1))
    assert len({m["source_job"] for m in store.list_models("shared")}) == WORKERS * JOBS


def test_the_sqlite_dialect_on_postgresql(pg_url: str) -> None:
    store = Store.at(pg_url)
    db = store._db
    # ? inside a literal stays; a literal % is not a placeholder; booleans land in INTEGER
    row = db.execute("SELECT 'a?b' AS s, ? AS n, 'x%' LIKE ? AS hit", (7, "x%")).fetchone()
    assert (row["s"], row[1], row["hit"]) == ("a?b", 7, True)
    assert dict(row) == {"s": "a?b", "n": 7, "hit": True} and list(row) == ["a?b", 7, True]
    store.add_job(_job("j-1"))
    with store._tx() as tx:
        tx.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (True, "j-1"))
    assert store.get_job("j-1").attempts == 1
    # a text value compared with a number column is coerced, as SQLite does
    assert db.execute("SELECT id FROM jobs WHERE attempts = ?", ("1",)).fetchone()[0] == "j-1"
    assert db.execute("SELECT 1 WHERE ? IS NULL", (None,)).fetchone() is not None
    with pytest.raises(TypeError, match="placeholders"):
        db.execute("SELECT :x", {"x": 1})


def test_a_failed_write_transaction_leaves_nothing(pg_url: str) -> None:
    store = Store.at(pg_url)
    with pytest.raises(RuntimeError), store._tx() as db:
        db.execute("INSERT INTO models (name, version, uri, created_at) VALUES ('m', 1, 'u', 0)")
        raise RuntimeError("abort")
    assert store.list_models() == []
    assert store.add_model_version("m", "/u") == 1  # the lock was released with the rollback


def test_a_dropped_connection_is_reopened(pg_server: PgServer, pg_url: str) -> None:
    store = Store.at(pg_url)
    store.add_job(_job("j-1"))
    (pid,) = store._db.execute("SELECT pg_backend_pid()").fetchone()
    pg_server.admin(f"SELECT pg_terminate_backend({int(pid)})")
    with pytest.raises(Exception):  # noqa: B017 (psycopg's OperationalError: the server left)
        store.get_job("j-1")
    assert store.get_job("j-1").id == "j-1"  # the next use reconnects


def test_the_password_is_never_shown(pg_server: PgServer) -> None:
    """Over 127.0.0.1 with password auth, as a role that is no superuser (it owns the database
    and migrates it): the store works, and neither its repr, its locator, nor a failed
    connection's error (and traceback) shows the password."""
    database = urlsplit(pg_server.create_database("pw")).path.lstrip("/")
    url = pg_server.tcp_url(database)
    store = Store(url)
    store.add_job(_job("j-1"))
    for shown in (repr(store), store.where, store.locator, repr(store._db)):
        assert PG_PASSWORD not in shown
    assert pg.without_password(url) == f"postgresql://pwuser@127.0.0.1:{pg_server.port}/{database}"
    # another process finds the password in MLCLOUD_DATABASE_URL, not in what it was handed
    assert pg.with_password(store.locator, {"MLCLOUD_DATABASE_URL": url}) == url
    for bad in (url.replace(PG_PASSWORD, PG_PASSWORD + "-wrong"), url + "-missing"):
        with pytest.raises(pg.StoreUnavailable) as err:
            Store(bad)
        text = (
            str(err.value) + (err.value.hint or "") + "".join(traceback.format_exception(err.value))
        )
        assert PG_PASSWORD not in text and "<redacted>" in text
    assert pg.display_url("postgresql://h/db?user=u&password=p%40ss") == (
        "postgresql://h/db?user=u&password=<redacted>"
    )


def test_sqlite_only_features_say_what_to_use_instead(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLCLOUD_DATABASE_URL", pg_url)
    store = Store.open()
    assert store.backend == "postgresql"
    with pytest.raises(UnsupportedFeature, match="PostgreSQL") as err:
        store.backup()
    assert "pg_dump" in (err.value.hint or "")
    with pytest.raises(UnsupportedFeature, match="store recover"):
        recover(store.home / "state.db")
    with pytest.raises(UnsupportedFeature, match="file"):
        _ = store.path
    out = subprocess.run([*MLCLOUD, "store", "backup"], env=cli_env(), capture_output=True,
                         text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "pg_dump" in out.stderr, out.stderr


def test_psycopg_loads_only_for_a_postgresql_store(pg_url: str) -> None:
    probe = (
        "import sys\n"
        "from mlcloud.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "loaded = 'psycopg' in sys.modules\n"
        "from mlcloud.store import Store\n"
        "Store.open().close()\n"
        "print(loaded, 'psycopg' in sys.modules)\n"
    )
    for url, expected in (("", "False False"), (pg_url, "False True")):
        env = {**os.environ, "MLCLOUD_DATABASE_URL": url}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                             text=True, cwd=REPO, timeout=60)  # fmt: skip
        assert out.stdout.split("\n")[-2] == expected, out.stderr


def test_a_local_job_on_the_postgresql_store(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The local provider's supervisor (another process) records the job's end in the same
    PostgreSQL store, given the URL without its password (the password: from its environment);
    the job's own environment names the store, password-free."""
    from mlcloud.config import Profile
    from mlcloud.specs import TrainingJob
    from providers.local import LocalProvider

    database = urlsplit(pg_server.create_database("job")).path.lstrip("/")
    url = pg_server.tcp_url(database)
    monkeypatch.setenv("MLCLOUD_DATABASE_URL", url)
    (tmp_path / "main.py").write_text("import os; print('db', os.environ['MLCLOUD_STATE_DB'])")
    provider = LocalProvider(Profile("local", "local"), Store.open())
    job = TrainingJob(name="t", source=str(tmp_path), command=[sys.executable, "main.py"])
    record = provider.submit_job(provider.plan_job(job))
    deadline = time.monotonic() + 60
    while not (state := Store.open().get_job(record.id).state).terminal:
        assert time.monotonic() < deadline, f"still {state}"
        time.sleep(0.1)
    assert state is JobState.SUCCEEDED
    logs = "".join(provider.job_logs(record.id))
    assert f"db {pg.without_password(url)}" in logs and PG_PASSWORD not in logs


def _backend_pid(locator: str, out: Any) -> None:
    store = Store.at(locator)
    out.put(store._db.execute("SELECT pg_backend_pid()").fetchone()[0])


def test_closed_connections_are_reused_never_shared(pg_url: str) -> None:
    """A closed store's session serves the next store of this process; a handle kept past
    close() refuses to run; a forked child never gets its parent's sessions."""
    store = Store.at(pg_url)
    kept = store._db
    (pid,) = kept.execute("SELECT pg_backend_pid()").fetchone()
    store.close()
    with pytest.raises(pg.StoreUnavailable, match="closed"):
        kept.execute("SELECT 1")
    again = Store.at(pg_url)
    assert again._db.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
    again.close()  # back in the pool, then a child is forked
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_backend_pid, args=(pg_url, out))
    child.start()
    assert out.get(timeout=60) != pid
    child.join(60)
    parent = Store.at(pg_url)  # the parent's pooled session still works
    assert parent._db.execute("SELECT pg_backend_pid()").fetchone()[0] == pid


def test_a_url_of_another_kind_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLCLOUD_DATABASE_URL", "mysql://me:hunter2@db/mlcloud")
    with pytest.raises(ConfigError, match="not a PostgreSQL URL") as err:
        Store.open()
    assert "hunter2" not in str(err.value)
    url = "postgresql://me@db/x?sslmode=require&password=hunter2&application_name=a"
    assert pg.without_password(url) == "postgresql://me@db/x?sslmode=require&application_name=a"
    assert "hunter2" not in pg.display_url(url)
