"""The SQLite backend's own safety nets: damage detection, backups, job copies and recovery.

PostgreSQL has its own (pg_dump, WAL archiving, replicas), so none of this applies to a
``postgresql://`` store: :func:`sqlite_only` says so instead.


* a damaged file (not a database, a malformed page) raises :class:`StoreCorrupt`, which names the
  file and says how to recover, instead of a bare ``sqlite3.DatabaseError``;
* a store with no jobs while job directories hold copies of job records (a file truncated or
  replaced) is refused the same way, not shown as "no jobs yet";
* a rolling backup (SQLite's online backup API) is taken at most once per :data:`BACKUP_EVERY`
  after a write, into ``backups/``, the newest :data:`BACKUPS_KEPT` kept;
* a job whose record names its directory (``details["job_dir"]``) keeps a copy of its record
  there (``record.json``), rewritten on every update;
* :func:`recover` (``mlcloud store recover``) moves a damaged file aside, restores the newest
  sound backup and brings back every job whose directory holds a newer copy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from mlcloud import sensitive
from mlcloud.errors import MlcloudError, UnsupportedFeature
from mlcloud.records import JobRecord, JobState
from mlcloud.store.migrations import migrate

if TYPE_CHECKING:
    from mlcloud.store import Store

#: a copy of a job's record in its directory, for :func:`recover`
JOB_COPY = "record.json"
BACKUP_DIR = "backups"
BACKUPS_KEPT = 3
BACKUP_EVERY = 3600.0  # seconds between two backups
_CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB (primary result codes)
_RECOVER_HINT = (
    "mlcloud store recover moves it aside and rebuilds it from {backups} and the job "
    "directories under {jobs}"
)
_PG_HINTS = {
    "mlcloud store backup": "back it up with pg_dump (pg_dump -Fc DATABASE > mlcloud.dump) or "
    "PostgreSQL's continuous archiving",
    "mlcloud store recover": "restore it with pg_restore from a pg_dump, or PostgreSQL's "
    "point-in-time recovery",
}

F = TypeVar("F", bound=Callable[..., Any])


class StoreCorrupt(MlcloudError):
    """The state store's file is damaged, or lost the records its job directories remember."""


def sqlite_only(feature: str) -> UnsupportedFeature:
    """The error for a SQLite-only ``feature`` asked of a PostgreSQL store."""
    return UnsupportedFeature(
        feature, "a PostgreSQL state store", hint=_PG_HINTS.get(feature, "use a SQLite store")
    )


class SqliteConnection(sqlite3.Connection):
    """A connection :meth:`Store.close_all` can find (the base type takes no weak references):
    one whose Store is gone lives on until the cyclic GC runs, as its statement cache refers
    back to it, and must not cross a fork either."""


def connect_sqlite(path: Path, home: Path, *, check: bool) -> SqliteConnection:
    """Open (and migrate) the store's file; ``check``: refuse one that lost its jobs."""
    # Never open the file itself to look at it: closing any descriptor of a database drops
    # every POSIX lock this process's connections hold on it (sqlite.org/howtocorrupt.html).
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, factory=SqliteConnection)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(db)
        if check and db.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is None:
            copies = len(job_copies(home))
            if copies:
                raise corrupt(
                    path,
                    f"holds no jobs, but {copies} job directories under "
                    f"{home / 'jobs'} hold job records (was it truncated or replaced?)",
                )
    except BaseException:
        db.close()
        raise
    return db


def checked(method: F) -> F:
    """Turn SQLite's "corrupt" / "not a database" into :class:`StoreCorrupt` naming the file."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _CORRUPT_CODES:
                raise
            raise corrupt(self.path, f"is damaged ({exc})") from exc

    return cast(F, wrapper)


def corrupt(path: Path, what: str) -> StoreCorrupt:
    home = path.parent
    hint = _RECOVER_HINT.format(backups=home / BACKUP_DIR, jobs=home / "jobs")
    return StoreCorrupt(f"the state store {path} {what}", hint=hint)


def backups(folder: Path) -> list[Path]:
    """Backups, newest first (their names sort by time)."""
    try:
        return sorted(folder.glob("state-*.db"), reverse=True)
    except OSError:
        return []


def soundness(db: sqlite3.Connection) -> tuple[bool, int]:
    """(passes SQLite's quick check, number of jobs)."""
    try:
        (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        (jobs,) = db.execute("SELECT COUNT(*) FROM jobs").fetchone()
    except sqlite3.DatabaseError:
        return False, 0
    return verdict == "ok", int(jobs)


def job_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return soundness(db)[1]


def job_copies(home: Path) -> list[Path]:
    """The ``record.json`` copies in the job directories under ``home``."""
    jobs = home / "jobs"
    try:
        return [d / JOB_COPY for d in jobs.iterdir() if (d / JOB_COPY).is_file()]
    except OSError:
        return []


def keep_copy(job: JobRecord) -> None:
    """Rewrite the copy of ``job`` in its directory (atomically, private): what :func:`recover`
    brings back. Best effort: the store is the record; a directory not made yet is skipped."""
    folder = job.details.get("job_dir")
    if not folder or not os.path.isdir(folder):
        return
    tmp = Path(folder) / f".{JOB_COPY}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sensitive.redact(job.to_dict()), f, sort_keys=True)
        os.replace(tmp, Path(folder) / JOB_COPY)


def read_copy(path: Path) -> JobRecord:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["state"] = JobState(data["state"])
    return JobRecord(**data)


def recover(path: Path) -> dict[str, Any]:
    """Rebuild the store at ``path``: a damaged file (or one holding no jobs while job
    directories remember some) is moved aside and the newest sound backup restored; then every
    job whose directory holds a newer copy of its record is brought back. Returns a report.
    Refused when the configured store is PostgreSQL (MLCLOUD_DATABASE_URL): its file is not
    the store in use."""
    from mlcloud.store import DATABASE_URL_ENV, Store, pg

    if pg.is_url(os.environ.get(DATABASE_URL_ENV, "")):
        raise sqlite_only("mlcloud store recover")
    report: dict[str, Any] = {"store": str(path), "moved_aside": None, "backup": None}
    Store.close_all()
    if not _usable(path):
        report["moved_aside"] = _move_aside(path)
        report["backup"] = _restore_newest_backup(path)
    store = Store(path, check=False)
    store._backup_due = float("inf")  # no backup of a half-rebuilt store
    report["jobs_from_backup"] = len(store.list_jobs(limit=1_000_000))
    restored, unreadable = 0, []
    for copy in sorted(job_copies(path.parent)):
        try:
            restored += _restore_job(store, read_copy(copy), copy)
        except (ValueError, TypeError, KeyError):
            unreadable.append(str(copy))
    report["jobs_from_job_dirs"], report["unreadable"] = restored, unreadable
    report["jobs"] = len(store.list_jobs(limit=1_000_000))
    store.close()
    return report


def _restore_job(store: Store, job: JobRecord, source: Path) -> bool:
    """Bring ``job`` back from a copy of its record unless the store holds it as new."""
    row = store._db.execute("SELECT updated_at FROM jobs WHERE id = ?", (job.id,)).fetchone()
    if row is not None and row["updated_at"] >= job.updated_at:
        return False
    store._put_job(job, f"recovered from {source}")
    return True


def _usable(path: Path) -> bool:
    """Sound, and holding jobs if job directories remember some."""
    from mlcloud.store import Store

    if not path.exists():
        return False
    try:
        Store(path).close()
    except StoreCorrupt:
        return False
    with contextlib.closing(sqlite3.connect(path)) as db:
        sound, jobs = soundness(db)
    newest = backups(path.parent / BACKUP_DIR)[:1]
    # An empty store while a backup holds jobs was emptied: restore it.
    return sound and (jobs > 0 or not newest or job_count(newest[0]) == 0)


def _move_aside(path: Path) -> str | None:
    if not path.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return str(aside)


def _restore_newest_backup(path: Path) -> str | None:
    for candidate in backups(path.parent / BACKUP_DIR):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{candidate}?mode=ro", uri=True)) as src:
                if not soundness(src)[0]:
                    continue
                with contextlib.closing(sqlite3.connect(path)) as dst:
                    src.backup(dst)
        except sqlite3.DatabaseError:
            path.unlink(missing_ok=True)
            continue
        return str(candidate)
    return None


def backup_into(db: sqlite3.Connection, folder: Path) -> Path | None:
    """See :meth:`mlcloud.store.Store.backup`."""
    folder.mkdir(mode=0o700, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    final = folder / f"state-{stamp}.db"
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    try:
        with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as dst:
            db.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
            sound, jobs = soundness(dst)
        previous = backups(folder)[:1]
        if not sound or (previous and jobs < job_count(previous[0])):
            return None
        os.chmod(tmp, 0o600)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    for old in backups(folder)[BACKUPS_KEPT:]:
        old.unlink(missing_ok=True)
    return final


def maybe_backup(store: Store) -> float:
    """Back ``store`` up when its newest backup is older than BACKUP_EVERY; never fails a
    write. Returns when to look again."""
    due = time.time() + BACKUP_EVERY
    with contextlib.suppress(OSError, sqlite3.Error, StoreCorrupt):
        newest = backups(store.backup_dir)[:1]
        last = newest[0].stat().st_mtime if newest else 0.0
        if time.time() - last < BACKUP_EVERY:
            return last + BACKUP_EVERY
        store.backup()
    return due
