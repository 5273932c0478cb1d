"""A damaged or emptied state store: detected, named, and rebuilt from backups and job dirs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mlcloud.records import JobRecord, JobState
from mlcloud.store import BACKUPS_KEPT, JOB_COPY, Store, StoreCorrupt, backend_sqlite, recover
from tests.conftest import MLCLOUD


def _fill(home: Path, jobs: int) -> Store:
    """A store with ``jobs`` finished jobs, each with a job directory (as local jobs have)."""
    store = Store(home / "state.db")
    for i in range(jobs):
        folder = home / "jobs" / f"j-{i:03d}"
        folder.mkdir(parents=True)
        record = JobRecord(
            id=f"j-{i:03d}",
            name="j",
            provider="local",
            type="local",
            state=JobState.PENDING,
            details={"job_dir": str(folder)},
            spec={"name": "j", "command": ["python", "train.py"]},
        )
        store.add_job(record)
        store.update_job(record.id, state=JobState.RUNNING, attempts=1, event="attempt 1 started")
        store.update_job(record.id, state=JobState.SUCCEEDED, exit_code=0, message="succeeded")
    return store


def test_every_update_keeps_a_private_copy_in_the_job_dir(tmp_path: Path) -> None:
    store = _fill(tmp_path, 1)
    copy = tmp_path / "jobs" / "j-000" / JOB_COPY
    assert copy.stat().st_mode & 0o777 == 0o600
    assert backend_sqlite.read_copy(copy) == store.get_job("j-000")


def test_truncated_store_is_refused_not_shown_empty(tmp_path: Path) -> None:
    _fill(tmp_path, 20).close()
    (tmp_path / "state.db").write_bytes(b"")  # truncated to 0 bytes
    with pytest.raises(StoreCorrupt) as err:
        Store(tmp_path / "state.db")
    assert str(tmp_path / "state.db") in err.value.message
    assert "20 job directories" in err.value.message
    assert "mlcloud store recover" in (err.value.hint or "")
    report = recover(tmp_path / "state.db")
    assert report["jobs"] == 20 and report["moved_aside"]
    back = Store(tmp_path / "state.db")
    assert {j.state for j in back.list_jobs()} == {JobState.SUCCEEDED}
    assert back.get_job("j-007").spec["command"] == ["python", "train.py"]


def test_garbage_header_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    _fill(tmp_path, 3).close()
    with (tmp_path / "state.db").open("r+b") as f:
        f.write(b"this is not a database at all!!")
    with pytest.raises(StoreCorrupt, match="is damaged") as err:
        Store(tmp_path / "state.db")
    assert str(tmp_path / "state.db") in err.value.message
    assert "mlcloud store recover" in (err.value.hint or "")
    assert recover(tmp_path / "state.db")["jobs"] == 3


def test_a_damaged_page_is_reported_on_read(tmp_path: Path) -> None:
    store = _fill(tmp_path, 200)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    size = (tmp_path / "state.db").stat().st_size
    with (tmp_path / "state.db").open("r+b") as f:  # scribble over every page but the first
        for offset in range(4096, size, 4096):
            f.seek(offset)
            f.write(b"\xff" * 64)
    with pytest.raises(StoreCorrupt, match="is damaged"):
        Store(tmp_path / "state.db").list_jobs(limit=1000)
    assert recover(tmp_path / "state.db")["jobs"] == 200


def test_rolling_backups_are_sound_and_never_shrink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _fill(tmp_path, 2)
    backups = sorted((tmp_path / "backups").glob("state-*.db"))
    assert len(backups) == 1  # taken after the first write
    assert backups[0].stat().st_mode & 0o777 == 0o600
    for _ in range(BACKUPS_KEPT + 2):
        assert store.backup() is not None
    assert len(list((tmp_path / "backups").glob("state-*.db"))) == BACKUPS_KEPT
    # A store that lost jobs does not push a good backup out.
    store.close()
    (tmp_path / "state.db").unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'state.db'}{suffix}").unlink(missing_ok=True)
    assert Store(tmp_path / "state.db", check=False).backup() is None
    # Due backups are taken after a write, at most once per BACKUP_EVERY.
    monkeypatch.setattr(backend_sqlite, "BACKUP_EVERY", 0.0)
    fresh = Store(tmp_path / "other" / "state.db")
    fresh.add_job(JobRecord(id="x", name="x", provider="p", type="t", state=JobState.PENDING))
    assert list((tmp_path / "other" / "backups").glob("state-*.db"))


def test_recover_restores_from_a_backup_when_job_dirs_are_gone(tmp_path: Path) -> None:
    store = _fill(tmp_path, 4)
    store.backup()
    store.close()
    for copy in (tmp_path / "jobs").glob(f"*/{JOB_COPY}"):
        copy.unlink()
    (tmp_path / "state.db").write_bytes(b"")
    report = recover(tmp_path / "state.db")
    assert report["backup"] and report["jobs_from_backup"] == 4 and report["jobs"] == 4
    events = Store(tmp_path / "state.db").job_events("j-002")
    assert [e["state"] for e in events] == ["PENDING", "RUNNING", "SUCCEEDED"]


def test_cli_names_the_damage_and_recovers(tmp_path: Path) -> None:
    home = Path(os.environ["MLCLOUD_HOME"])
    _fill(home, 5).close()
    (home / "state.db").write_bytes(b"")
    listing = subprocess.run([*MLCLOUD, "jobs", "list"], capture_output=True, text=True)
    assert listing.returncode == 1
    assert f"error: the state store {home / 'state.db'}" in listing.stderr
    assert "hint: mlcloud store recover" in listing.stderr
    fixed = subprocess.run(
        [*MLCLOUD, "store", "recover"], capture_output=True, text=True, check=True
    )
    assert "now holds 5 job(s)" in fixed.stdout
    listing = subprocess.run([*MLCLOUD, "jobs", "list"], capture_output=True, text=True)
    assert listing.returncode == 0 and listing.stdout.count("SUCCEEDED") == 5
