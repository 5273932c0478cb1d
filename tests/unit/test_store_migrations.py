"""The store's schema is a versioned migration list, applied in place to an existing store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mlcloud.errors import MlcloudError
from mlcloud.records import JobRecord, JobState
from mlcloud.store import Store
from mlcloud.store.migrations import SQL_DIR, migrations, split_statements


def test_every_migration_file_is_numbered_and_complete() -> None:
    found = migrations()
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].version == 1
    assert len(found) == len(list(SQL_DIR.glob("*.sql")))


def test_a_store_from_before_migrations_is_upgraded_in_place(tmp_path: Path) -> None:
    # A store made by an mlcloud without schema_migrations: 0001's tables and a job in them.
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        for statement in split_statements((SQL_DIR / "0001_base.sql").read_text()):
            db.execute(statement)
        db.execute(
            "INSERT INTO jobs (id, name, provider, type, state, created_at, updated_at) "
            "VALUES ('j-old', 'old', 'local', 'local', 'SUCCEEDED', 1, 1)"
        )
    store = Store(path, check=False)
    assert store.get_job("j-old").state is JobState.SUCCEEDED
    versions = {r[0] for r in store._db.execute("SELECT version FROM schema_migrations")}
    assert versions == {m.version for m in migrations()}
    store.add_job(
        JobRecord(id="j-new", name="new", provider="local", type="local", state=JobState.PENDING)
    )
    assert {j.id for j in store.list_jobs()} == {"j-old", "j-new"}


def test_a_store_written_by_a_newer_mlcloud_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (9999, 'future', 0)")
    with pytest.raises(MlcloudError, match=r"\[9999\].*newer mlcloud"):
        Store(path)
