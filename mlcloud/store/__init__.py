"""The local state store: every job, endpoint and model version mlcloud has made.

SQLite in WAL mode under ``$MLCLOUD_HOME`` (default ``~/.mlcloud``). Every write is one short
``BEGIN IMMEDIATE`` transaction, so concurrent CLI invocations and job supervisors serialise on
SQLite's lock (with a busy timeout) and a process killed mid-write leaves the last committed state.
Never store credentials here: specs and provider details only.

Losing the file must not lose the jobs silently:

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
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from mlcloud import sensitive
from mlcloud.errors import MlcloudError, NotFoundLocally
from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState
from mlcloud.store.migrations import migrate

_JOB_JSON = ("outputs", "details", "spec")
_JOB_COLUMNS = (
    "id", "name", "provider", "type", "state", "native_id", "created_at", "updated_at",
    "exit_code", "message", "attempts", *_JOB_JSON,
)  # fmt: skip
_EP_JSON = ("details", "spec")
_EP_COLUMNS = (
    "name", "provider", "type", "state", "url", "model", "model_sha256", "source_job",
    "native_id", "created_at", "updated_at", "message", *_EP_JSON,
)  # fmt: skip


class _Connection(sqlite3.Connection):
    """A connection :meth:`Store.close_all` can find (the base type takes no weak references):
    one whose Store is gone lives on until the cyclic GC runs, as its statement cache refers
    back to it, and must not cross a fork either."""


_OPEN: weakref.WeakSet[Store] = weakref.WeakSet()
_CONNECTIONS: weakref.WeakSet[_Connection] = weakref.WeakSet()

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

F = TypeVar("F", bound=Callable[..., Any])


class StoreCorrupt(MlcloudError):
    """The state store's file is damaged, or lost the records its job directories remember."""


def _checked(method: F) -> F:
    """Turn SQLite's "corrupt" / "not a database" into :class:`StoreCorrupt` naming the file."""

    @functools.wraps(method)
    def checked(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in _CORRUPT_CODES:
                raise
            raise _corrupt(self.path, f"is damaged ({exc})") from exc

    return cast(F, checked)


def _corrupt(path: Path, what: str) -> StoreCorrupt:
    home = path.parent
    hint = _RECOVER_HINT.format(backups=home / BACKUP_DIR, jobs=home / "jobs")
    return StoreCorrupt(f"the state store {path} {what}", hint=hint)


def mlcloud_home() -> Path:
    return Path(os.environ.get("MLCLOUD_HOME") or Path.home() / ".mlcloud").expanduser()


class Store:
    """A handle on the SQLite store. Cheap to open; safe to use from several processes."""

    def __init__(self, path: Path, *, check: bool = True) -> None:
        self._conn: sqlite3.Connection | None = None
        self.path = path
        self._check = check  # refuse a store that lost the jobs its job directories remember
        self._backup_due = 0.0  # wall time of the next look at backups/
        sensitive.private_database(path)  # 0600 in a 0700 home (a wider home is tightened)
        self._conn = self._connect()
        _OPEN.add(self)

    @_checked
    def _connect(self) -> sqlite3.Connection:
        # Never open the file itself to look at it: closing any descriptor of a database drops
        # every POSIX lock this process's connections hold on it (sqlite.org/howtocorrupt.html).
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, factory=_Connection)
        _CONNECTIONS.add(db)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            migrate(db)
            if self._check and db.execute("SELECT 1 FROM jobs LIMIT 1").fetchone() is None:
                copies = len(job_copies(self.home))
                if copies:
                    raise _corrupt(
                        self.path,
                        f"holds no jobs, but {copies} job directories under "
                        f"{self.home / 'jobs'} hold job records (was it truncated or replaced?)",
                    )
        except BaseException:
            db.close()
            raise
        return db

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:  # closed: reopen on use
            self._conn = self._connect()
        return self._conn

    @classmethod
    def open(cls, home: Path | None = None) -> Store:
        return cls((home or mlcloud_home()) / "state.db")

    @property
    def home(self) -> Path:
        return self.path.parent

    def close(self) -> None:
        """Release the connection; the store reconnects if it is used again."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        # Now, not when the cyclic GC gets to the connection. A store dropped on another thread
        # than the one that made it cannot close it here (SQLite's thread check): the
        # connection is then left to the GC, and close_all still tracks it for a fork.
        with contextlib.suppress(sqlite3.ProgrammingError):
            self.close()

    @staticmethod
    def close_all() -> None:
        """Close every open store and connection of this process, e.g. before a fork: SQLite
        state must not cross a fork (https://sqlite.org/howtocorrupt.html#fork)."""
        for store in list(_OPEN):
            store.close()
        for conn in list(_CONNECTIONS):
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if time.time() >= self._backup_due:
            self._maybe_backup()

    # ---- backups -----------------------------------------------------------------------------
    @property
    def backup_dir(self) -> Path:
        return self.home / BACKUP_DIR

    def _maybe_backup(self) -> None:
        """Back up when the newest backup is older than BACKUP_EVERY; never fails a write."""
        self._backup_due = time.time() + BACKUP_EVERY
        with contextlib.suppress(OSError, sqlite3.Error, StoreCorrupt):
            newest = _backups(self.backup_dir)[:1]
            last = newest[0].stat().st_mtime if newest else 0.0
            if time.time() - last < BACKUP_EVERY:
                self._backup_due = last + BACKUP_EVERY
                return
            self.backup()

    @_checked
    def backup(self) -> Path | None:
        """Copy the store into ``backups/`` with SQLite's online backup API (consistent while
        others write) and keep the newest BACKUPS_KEPT. A copy that fails SQLite's quick check,
        or holds fewer jobs than the newest backup (jobs are never deleted: the store lost
        some), is discarded so that it never pushes a good backup out. Returns the copy kept."""
        folder = self.backup_dir
        folder.mkdir(mode=0o700, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        final = folder / f"state-{stamp}.db"
        tmp = folder / f".{final.name}.{os.getpid()}.tmp"
        try:
            with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as dst:
                self._db.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
                sound, jobs = _soundness(dst)
            previous = _backups(folder)[:1]
            if not sound or (previous and jobs < _job_count(previous[0])):
                return None
            os.chmod(tmp, 0o600)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        for old in _backups(folder)[BACKUPS_KEPT:]:
            old.unlink(missing_ok=True)
        return final

    # ---- jobs --------------------------------------------------------------------------------
    @_checked
    def add_job(self, job: JobRecord) -> JobRecord:
        now = time.time()
        job.created_at = job.created_at or now
        job.updated_at = now
        row = _job_row(job)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "  # noqa: S608 (constant columns)
                f"VALUES ({', '.join('?' for _ in _JOB_COLUMNS)})",
                [row[c] for c in _JOB_COLUMNS],
            )
            _add_event(db, job.id, job.state, job.attempts or None, None, job.message)
        _keep_copy(job)
        return job

    @_checked
    def get_job(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundLocally(
                f"no job {job_id!r} in {self.path}", hint="list jobs with: mlcloud jobs list"
            )
        return _job_from_row(row)

    @_checked
    def update_job(
        self,
        job_id: str,
        *,
        state: JobState | None = None,
        event: str | None = None,
        unless_terminal: bool = True,
        merge_outputs: dict[str, str] | None = None,
        merge_details: dict[str, Any] | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Update fields atomically; record a state event when the state changes (its message:
        ``event``, else the new ``message``).

        With ``unless_terminal`` (the default) a finished job is never moved back to a running
        state: a late heartbeat cannot undo a cancel.
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundLocally(f"no job {job_id!r} in {self.path}")
            job = _job_from_row(row)
            if unless_terminal and job.state.terminal and state is not None:
                return job
            for key, value in fields.items():
                setattr(job, key, value)
            if merge_outputs:
                job.outputs.update(merge_outputs)
            if merge_details:
                job.details.update(merge_details)
            changed = state is not None and state != job.state
            if state is not None:
                job.state = state
            job.updated_at = time.time()
            row_data = _job_row(job)
            cols = [c for c in _JOB_COLUMNS if c != "id"]
            db.execute(
                f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",  # noqa: S608
                [row_data[c] for c in cols] + [job_id],
            )
            if changed or event:
                said = event if event is not None else (fields.get("message") if changed else None)
                _add_event(db, job_id, job.state, job.attempts or None, job.exit_code, said)
        _keep_copy(job)
        return job

    @_checked
    def _restore_job(self, job: JobRecord, source: Path) -> bool:
        """Bring ``job`` back from a copy of its record unless the store holds it as new."""
        row = self._db.execute("SELECT updated_at FROM jobs WHERE id = ?", (job.id,)).fetchone()
        if row is not None and row["updated_at"] >= job.updated_at:
            return False
        data = _job_row(job)
        with self._tx() as db:
            if row is not None:
                cols = [c for c in _JOB_COLUMNS if c != "id"]
                db.execute(
                    f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",  # noqa: S608
                    [data[c] for c in cols] + [job.id],
                )
            else:
                db.execute(
                    f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "  # noqa: S608
                    f"VALUES ({', '.join('?' for _ in _JOB_COLUMNS)})",
                    [data[c] for c in _JOB_COLUMNS],
                )
            _add_event(db, job.id, job.state, job.attempts or None, job.exit_code,
                       f"recovered from {source}")  # fmt: skip
        return True

    @_checked
    def list_jobs(self, provider: str | None = None, limit: int = 200) -> list[JobRecord]:
        query = "SELECT * FROM jobs"
        args: list[Any] = []
        if provider is not None:
            query += " WHERE provider = ?"
            args.append(provider)
        query += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [_job_from_row(r) for r in self._db.execute(query, args)]

    @_checked
    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT ts, state, attempt, exit_code, message FROM job_events "
            "WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        return [dict(r) for r in rows]

    # ---- endpoints ---------------------------------------------------------------------------
    @_checked
    def put_endpoint(self, ep: EndpointRecord) -> EndpointRecord:
        """Insert or replace the endpoint ``(name, provider)``."""
        now = time.time()
        ep.created_at = ep.created_at or now
        ep.updated_at = now
        row = _ep_row(ep)
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO endpoints ({', '.join(_EP_COLUMNS)}) "  # noqa: S608
                f"VALUES ({', '.join('?' for _ in _EP_COLUMNS)})",
                [row[c] for c in _EP_COLUMNS],
            )
        return ep

    @_checked
    def get_endpoint(self, name: str, provider: str | None = None) -> EndpointRecord:
        query, args = "SELECT * FROM endpoints WHERE name = ?", [name]
        if provider is not None:
            query += " AND provider = ?"
            args.append(provider)
        rows = self._db.execute(query, args).fetchall()
        if not rows:
            raise NotFoundLocally(
                f"no endpoint {name!r}", hint="list endpoints with: mlcloud endpoints list"
            )
        if len(rows) > 1:
            from mlcloud.errors import ConfigError

            raise ConfigError(
                f"endpoint {name!r} exists on several providers",
                hint="pick one with --provider: " + ", ".join(r["provider"] for r in rows),
            )
        return _ep_from_row(rows[0])

    @_checked
    def delete_endpoint(self, name: str, provider: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM endpoints WHERE name = ? AND provider = ?", (name, provider))

    @_checked
    def list_endpoints(self, provider: str | None = None) -> list[EndpointRecord]:
        query, args = "SELECT * FROM endpoints", []
        if provider is not None:
            query += " WHERE provider = ?"
            args.append(provider)
        return [_ep_from_row(r) for r in self._db.execute(query + " ORDER BY name", args)]

    # ---- models ------------------------------------------------------------------------------
    @_checked
    def add_model_version(
        self,
        name: str,
        uri: str,
        *,
        sha256: str | None = None,
        framework: str | None = None,
        source_job: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Record a new version of model ``name`` and return its number (1, 2, ...)."""
        with self._tx() as db:
            (latest,) = db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM models WHERE name = ?", (name,)
            ).fetchone()
            version = int(latest) + 1
            db.execute(
                "INSERT INTO models (name, version, uri, sha256, framework, source_job, "
                "created_at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, version, uri, sha256, framework, source_job, time.time(),
                 json.dumps(details or {})),
            )  # fmt: skip
        return version

    @_checked
    def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM models", []
        if name is not None:
            query += " WHERE name = ?"
            args.append(name)
        rows = self._db.execute(query + " ORDER BY name, version", args)
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


# ---- damage, copies and recovery ---------------------------------------------------------------
def _backups(folder: Path) -> list[Path]:
    """Backups, newest first (their names sort by time)."""
    try:
        return sorted(folder.glob("state-*.db"), reverse=True)
    except OSError:
        return []


def _soundness(db: sqlite3.Connection) -> tuple[bool, int]:
    """(passes SQLite's quick check, number of jobs)."""
    try:
        (verdict,) = db.execute("PRAGMA quick_check").fetchone()
        (jobs,) = db.execute("SELECT COUNT(*) FROM jobs").fetchone()
    except sqlite3.DatabaseError:
        return False, 0
    return verdict == "ok", int(jobs)


def _job_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return _soundness(db)[1]


def job_copies(home: Path) -> list[Path]:
    """The ``record.json`` copies in the job directories under ``home``."""
    jobs = home / "jobs"
    try:
        return [d / JOB_COPY for d in jobs.iterdir() if (d / JOB_COPY).is_file()]
    except OSError:
        return []


def _keep_copy(job: JobRecord) -> None:
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


def _read_copy(path: Path) -> JobRecord:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["state"] = JobState(data["state"])
    return JobRecord(**data)


def recover(path: Path) -> dict[str, Any]:
    """Rebuild the store at ``path``: a damaged file (or one holding no jobs while job
    directories remember some) is moved aside and the newest sound backup restored; then every
    job whose directory holds a newer copy of its record is brought back. Returns a report."""
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
            restored += store._restore_job(_read_copy(copy), copy)
        except (ValueError, TypeError, KeyError):
            unreadable.append(str(copy))
    report["jobs_from_job_dirs"], report["unreadable"] = restored, unreadable
    report["jobs"] = len(store.list_jobs(limit=1_000_000))
    store.close()
    return report


def _usable(path: Path) -> bool:
    """Sound, and holding jobs if job directories remember some."""
    if not path.exists():
        return False
    try:
        Store(path).close()
    except StoreCorrupt:
        return False
    with contextlib.closing(sqlite3.connect(path)) as db:
        sound, jobs = _soundness(db)
    newest = _backups(path.parent / BACKUP_DIR)[:1]
    # An empty store while a backup holds jobs was emptied: restore it.
    return sound and (jobs > 0 or not newest or _job_count(newest[0]) == 0)


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
    for candidate in _backups(path.parent / BACKUP_DIR):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{candidate}?mode=ro", uri=True)) as src:
                if not _soundness(src)[0]:
                    continue
                with contextlib.closing(sqlite3.connect(path)) as dst:
                    src.backup(dst)
        except sqlite3.DatabaseError:
            path.unlink(missing_ok=True)
            continue
        return str(candidate)
    return None


def _add_event(
    db: sqlite3.Connection,
    job_id: str,
    state: JobState,
    attempt: int | None,
    exit_code: int | None,
    message: str | None,
) -> None:
    db.execute(
        "INSERT INTO job_events (job_id, ts, state, attempt, exit_code, message) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, time.time(), str(state), attempt, exit_code, message),
    )


def _job_row(job: JobRecord) -> dict[str, Any]:
    data: dict[str, Any] = sensitive.redact(job.to_dict())  # no secret-looking env value
    for key in _JOB_JSON:
        data[key] = json.dumps(data[key], sort_keys=True)
    return data


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    for key in _JOB_JSON:
        data[key] = json.loads(data[key])
    data["state"] = JobState(data["state"])
    return JobRecord(**data)


def _ep_row(ep: EndpointRecord) -> dict[str, Any]:
    data: dict[str, Any] = sensitive.redact(ep.to_dict())  # no secret-looking env value
    for key in _EP_JSON:
        data[key] = json.dumps(data[key], sort_keys=True)
    return data


def _ep_from_row(row: sqlite3.Row) -> EndpointRecord:
    data = dict(row)
    for key in _EP_JSON:
        data[key] = json.loads(data[key])
    data["state"] = EndpointState(data["state"])
    return EndpointRecord(**data)
