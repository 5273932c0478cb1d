"""The local state store: every job, endpoint and model version mlcloud has made.

SQLite in WAL mode under ``$MLCLOUD_HOME`` (default ``~/.mlcloud``). Every write is one short
``BEGIN IMMEDIATE`` transaction, so concurrent CLI invocations and job supervisors serialise on
SQLite's lock (with a busy timeout) and a process killed mid-write leaves the last committed state.
Never store credentials here: specs and provider details only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlcloud.errors import NotFoundLocally
from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    native_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    exit_code INTEGER,
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '{}',
    details TEXT NOT NULL DEFAULT '{}',
    spec TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_provider ON jobs (provider, created_at);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    exit_code INTEGER,
    message TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON job_events (job_id, seq);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    url TEXT,
    model TEXT,
    model_sha256 TEXT,
    source_job TEXT,
    native_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    message TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    spec TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, provider)
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT,
    framework TEXT,
    source_job TEXT,
    created_at REAL NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, version)
);
"""

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


_OPEN: weakref.WeakSet[Store] = weakref.WeakSet()


def mlcloud_home() -> Path:
    return Path(os.environ.get("MLCLOUD_HOME") or Path.home() / ".mlcloud").expanduser()


class Store:
    """A handle on the SQLite store. Cheap to open; safe to use from several processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._conn: sqlite3.Connection | None = self._connect()
        _OPEN.add(self)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
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

    @staticmethod
    def close_all() -> None:
        """Close every open store of this process, e.g. before a fork: SQLite state must not
        cross a fork (https://sqlite.org/howtocorrupt.html#fork)."""
        for store in list(_OPEN):
            store.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ---- jobs --------------------------------------------------------------------------------
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
        return job

    def get_job(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundLocally(
                f"no job {job_id!r} in {self.path}", hint="list jobs with: mlcloud jobs list"
            )
        return _job_from_row(row)

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
        """Update fields atomically; record a state event when the state changes.

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
                _add_event(db, job_id, job.state, job.attempts or None, job.exit_code, event)
        return job

    def list_jobs(self, provider: str | None = None, limit: int = 200) -> list[JobRecord]:
        query = "SELECT * FROM jobs"
        args: list[Any] = []
        if provider is not None:
            query += " WHERE provider = ?"
            args.append(provider)
        query += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [_job_from_row(r) for r in self._db.execute(query, args)]

    def job_events(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT ts, state, attempt, exit_code, message FROM job_events "
            "WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        return [dict(r) for r in rows]

    # ---- endpoints ---------------------------------------------------------------------------
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

    def delete_endpoint(self, name: str, provider: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM endpoints WHERE name = ? AND provider = ?", (name, provider))

    def list_endpoints(self, provider: str | None = None) -> list[EndpointRecord]:
        query, args = "SELECT * FROM endpoints", []
        if provider is not None:
            query += " WHERE provider = ?"
            args.append(provider)
        return [_ep_from_row(r) for r in self._db.execute(query + " ORDER BY name", args)]

    # ---- models ------------------------------------------------------------------------------
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

    def list_models(self, name: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM models", []
        if name is not None:
            query += " WHERE name = ?"
            args.append(name)
        rows = self._db.execute(query + " ORDER BY name, version", args)
        return [{**dict(r), "details": json.loads(r["details"])} for r in rows]


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
    data = job.to_dict()
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
    data = ep.to_dict()
    for key in _EP_JSON:
        data[key] = json.dumps(data[key], sort_keys=True)
    return data


def _ep_from_row(row: sqlite3.Row) -> EndpointRecord:
    data = dict(row)
    for key in _EP_JSON:
        data[key] = json.loads(data[key])
    data["state"] = EndpointState(data["state"])
    return EndpointRecord(**data)
