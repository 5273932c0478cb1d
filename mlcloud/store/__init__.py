"""The state store: every job, endpoint and model version mlcloud has made.

Two backends behind one :class:`Store`, chosen by :meth:`Store.open` (the one entry point):

* **SQLite** (the default): WAL mode, ``$MLCLOUD_HOME/state.db`` (default ``~/.mlcloud``). Every
  write is one short ``BEGIN IMMEDIATE`` transaction, so concurrent CLI invocations and job
  supervisors serialise on SQLite's lock (with a busy timeout) and a process killed mid-write
  leaves the last committed state.
* **PostgreSQL** (``MLCLOUD_DATABASE_URL=postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``, the team
  server's shared store; ``pip install 'mlcloud[postgres]'``): psycopg 3, imported only then.
  Every write transaction first takes one transaction-level advisory lock
  (``pg_advisory_xact_lock``), so writers serialise exactly as under BEGIN IMMEDIATE and a
  read-modify-write inside ``_tx()`` (a version number, an alias move) cannot race; readers never
  wait (MVCC). SERIALIZABLE with retries was the alternative, but a retry must re-run the body of
  the ``with store._tx()`` block, which a context manager cannot do. The store's own job writes
  (``_tx(key)``) take that lock shared plus a lock on their key, so writes to different jobs
  overlap (about 2x the throughput at 50 clients: tests/benchmarks/store_bench.py) while every
  plain ``_tx()`` still runs alone.

The same query code runs on both (note for the store's feature modules, models/auth/rollouts):
write ``with store._tx() as db: db.execute(sql, params)``, read
``store._db.execute(sql, params).fetchall()``; ``?`` placeholders (positional only), rows by
column name or index, annotate a connection as :class:`Connection` (not ``sqlite3.Connection``).
On PostgreSQL a value must fit its column's type (no word in an INTEGER column), there is no
``lastrowid`` (use ``RETURNING``), and SQLite-only SQL (``INSERT OR ...``, ``PRAGMA``) fails.
Schema: the same ``sql/NNNN_*.sql`` files on both (:mod:`mlcloud.store.migrations`). Never store
credentials here; a database URL's password is never shown (:func:`pg.display_url`).

SQLite only (PostgreSQL has its own tools, and a clear error says so): damage detection, rolling
backups, job copies and ``mlcloud store recover`` (:mod:`mlcloud.store.backend_sqlite`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlcloud import sensitive
from mlcloud.errors import ConfigError, NotFoundLocally
from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState
from mlcloud.store import pg
from mlcloud.store.backend import Connection, Cursor
from mlcloud.store.backend_sqlite import (
    BACKUP_DIR,
    BACKUP_EVERY,
    BACKUPS_KEPT,
    JOB_COPY,
    SqliteConnection,
    StoreCorrupt,
    backup_into,
    connect_sqlite,
    job_copies,
    keep_copy,
    maybe_backup,
    recover,
    sqlite_only,
)
from mlcloud.store.backend_sqlite import checked as _checked
from mlcloud.store.migrations import migrate

__all__ = [
    "BACKUPS_KEPT", "BACKUP_DIR", "BACKUP_EVERY", "DATABASE_URL_ENV", "JOB_COPY", "Connection",
    "Cursor", "Store", "StoreCorrupt", "job_copies", "mlcloud_home", "recover",
]  # fmt: skip

#: selects the PostgreSQL backend (the team server's ``--database-url`` sets it)
DATABASE_URL_ENV = "MLCLOUD_DATABASE_URL"

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


def _upsert(table: str, columns: tuple[str, ...], key: int) -> str:
    """Insert or replace, in the SQL both backends speak; the first ``key`` columns: the key."""
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 (constant names)
        f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT ({', '.join(columns[:key])}) "
        f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns[key:])}"
    )


_UPSERT_ENDPOINT = _upsert("endpoints", _EP_COLUMNS, 2)
_UPSERT_JOB = _upsert("jobs", _JOB_COLUMNS, 1)


_OPEN: weakref.WeakSet[Store] = weakref.WeakSet()
_CONNECTIONS: weakref.WeakSet[SqliteConnection | pg.PgConnection] = weakref.WeakSet()
_MIGRATED: set[str] = set()  # PostgreSQL databases this process found up to date


def mlcloud_home() -> Path:
    return Path(os.environ.get("MLCLOUD_HOME") or Path.home() / ".mlcloud").expanduser()


class Store:
    """A handle on the store. Cheap to open; safe to use from several processes.

    ``Store(path)`` opens a SQLite file, ``Store("postgresql://...")`` a PostgreSQL database;
    ``home`` (job directories, logs) is the file's folder, else ``$MLCLOUD_HOME``."""

    def __init__(self, path: Path | str, *, check: bool = True, home: Path | None = None) -> None:
        self._conn: Connection | None = None
        self._url = str(path) if pg.is_url(str(path)) else None
        self._path = None if self._url else Path(path)
        self._home = home or (self._path.parent if self._path else mlcloud_home())
        self._check = check  # refuse a store that lost the jobs its job directories remember
        self._backup_due = float("inf") if self._url else 0.0  # next look at backups/
        if self._path is not None:
            sensitive.private_database(self._path)  # 0600 in a 0700 home (a wider one: tightened)
        self._conn = self._connect()
        _OPEN.add(self)

    @staticmethod
    @contextmanager
    def borrowed(store: Store | None) -> Iterator[Store]:
        """``store`` if the caller passed one (left open), else the configured store, opened
        here and closed when the block ends: for functions that take an optional store."""
        if store is not None:
            yield store
            return
        opened = Store.open()
        try:
            yield opened
        finally:
            opened.close()

    @classmethod
    def open(cls, home: Path | None = None) -> Store:
        """The configured store: PostgreSQL when ``MLCLOUD_DATABASE_URL`` says so, else
        ``state.db`` under ``home`` (default ``$MLCLOUD_HOME``)."""
        url = os.environ.get(DATABASE_URL_ENV, "").strip()
        if not url:
            return cls((home or mlcloud_home()) / "state.db")
        if pg.is_url(url):
            return cls(url, home=home)
        raise ConfigError(
            f"{DATABASE_URL_ENV} {pg.display_url(url)!r} is not a PostgreSQL URL",
            hint=f"postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, or unset {DATABASE_URL_ENV} "
            "for the local SQLite store",
        )

    @classmethod
    def at(cls, locator: str, *, home: Path | None = None) -> Store:
        """Reopen the store another process named by :attr:`locator`."""
        if pg.is_url(locator):
            return cls(pg.with_password(locator, os.environ), home=home)
        return cls(Path(locator))

    @property
    def backend(self) -> str:
        return "postgresql" if self._url else "sqlite"

    @property
    def locator(self) -> str:
        """What another process passes to :meth:`at`: the file, or the URL without password."""
        return pg.without_password(self._url) if self._url else str(self._path)

    @property
    def where(self) -> str:
        """The store as shown to a person (a URL's password masked)."""
        return pg.display_url(self._url) if self._url else str(self._path)

    @property
    def path(self) -> Path:
        """The SQLite file (a PostgreSQL store has none)."""
        if self._path is None:
            raise sqlite_only("a state store file")
        return self._path

    @property
    def home(self) -> Path:
        return self._home

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    def _connect(self) -> Connection:
        if self._url is not None:
            db = pg.connect(self._url)
            _CONNECTIONS.add(db)
            try:
                if self._url not in _MIGRATED:
                    migrate(db, dialect="postgresql")
                    _MIGRATED.add(self._url)
            except BaseException:
                db.close()
                raise
            return db
        return self._connect_sqlite()

    @_checked
    def _connect_sqlite(self) -> Connection:
        db = connect_sqlite(self.path, self.home, check=self._check)
        _CONNECTIONS.add(db)
        return db

    @property
    def _db(self) -> Connection:
        conn = self._conn
        if conn is None or (isinstance(conn, pg.PgConnection) and conn.broken):
            self._conn = conn = self._connect()  # closed, or the server went away: reconnect
        return conn

    def _sqlite(self) -> sqlite3.Connection:
        db = self._db
        if not isinstance(db, sqlite3.Connection):
            raise sqlite_only("a SQLite connection")
        return db

    def close(self) -> None:
        """Release the connection; the store reconnects if it is used again."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __del__(self) -> None:
        # Now, not when the cyclic GC gets to the connection. A store dropped on another thread
        # than the one that made it cannot close it here (SQLite's thread check): the
        # connection is then left to the GC, and close_all still tracks it for a fork.
        with contextlib.suppress(sqlite3.ProgrammingError):
            self.close()

    @staticmethod
    def close_all() -> None:
        """Close every open store and connection of this process, e.g. before a fork: neither
        SQLite's nor libpq's state may cross a fork (https://sqlite.org/howtocorrupt.html#fork)."""
        for store in list(_OPEN):
            store.close()
        for conn in list(_CONNECTIONS):
            conn.close()
        pg.close_idle()

    @contextmanager
    def _tx(self, key: str | None = None) -> Iterator[Connection]:
        """One write transaction; writers of every process take turns (see the module doc).

        ``key`` (PostgreSQL; SQLite has one writer whatever the key): a write that reads and
        changes only the rows of one key (a job id, a model name) names it, and then runs
        alongside writes with other keys while still excluding every write without a key."""
        db = self._db
        if isinstance(db, pg.PgConnection):
            with db.transaction():
                db.lock_for_write(key)
                yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if time.time() >= self._backup_due:
            self._maybe_backup()

    # ---- backups (SQLite) ----------------------------------------------------------------------
    @property
    def backup_dir(self) -> Path:
        return self.home / BACKUP_DIR

    def _maybe_backup(self) -> None:
        """Back up when the newest backup is older than BACKUP_EVERY; never fails a write."""
        self._backup_due = maybe_backup(self)

    @_checked
    def backup(self) -> Path | None:
        """Copy the store into ``backups/`` with SQLite's online backup API (consistent while
        others write) and keep the newest BACKUPS_KEPT. A copy that fails SQLite's quick check,
        or holds fewer jobs than the newest backup (jobs are never deleted: the store lost
        some), is discarded so that it never pushes a good backup out. Returns the copy kept.
        A PostgreSQL store refuses (pg_dump is the tool)."""
        if self._url is not None:
            raise sqlite_only("mlcloud store backup")
        return backup_into(self._sqlite(), self.backup_dir)

    def _keep_copy(self, job: JobRecord) -> None:
        if self._url is None:  # job copies back SQLite's recovery only
            keep_copy(job)

    # ---- jobs --------------------------------------------------------------------------------
    @_checked
    def add_job(self, job: JobRecord) -> JobRecord:
        now = time.time()
        job.created_at = job.created_at or now
        job.updated_at = now
        row = _job_row(job)
        with self._tx(f"job:{job.id}") as db:
            db.execute(
                f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "  # noqa: S608 (constant columns)
                f"VALUES ({', '.join('?' for _ in _JOB_COLUMNS)})",
                [row[c] for c in _JOB_COLUMNS],
            )
            _add_event(db, job.id, job.state, job.attempts or None, None, job.message)
        self._keep_copy(job)
        return job

    @_checked
    def get_job(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundLocally(
                f"no job {job_id!r} in {self.where}", hint="list jobs with: mlcloud jobs list"
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
        with self._tx(f"job:{job_id}") as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundLocally(f"no job {job_id!r} in {self.where}")
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
        self._keep_copy(job)
        return job

    @_checked
    def _put_job(self, job: JobRecord, event: str) -> None:
        """Insert ``job`` or overwrite it whole (recovery), with an event saying why."""
        data = _job_row(job)
        with self._tx() as db:
            db.execute(_UPSERT_JOB, [data[c] for c in _JOB_COLUMNS])
            _add_event(db, job.id, job.state, job.attempts or None, job.exit_code, event)

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
            db.execute(_UPSERT_ENDPOINT, [row[c] for c in _EP_COLUMNS])
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
        with self._tx(f"model:{name}") as db:
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


def _add_event(
    db: Connection,
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


def _job_from_row(row: Any) -> JobRecord:
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


def _ep_from_row(row: Any) -> EndpointRecord:
    data = dict(row)
    for key in _EP_JSON:
        data[key] = json.loads(data[key])
    data["state"] = EndpointState(data["state"])
    return EndpointRecord(**data)
