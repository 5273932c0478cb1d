"""The PostgreSQL backend of the state store: a connection that speaks the store's SQLite dialect.

The store's query code (``mlcloud/store/*.py``) is written once, for SQLite's ``sqlite3`` surface:
``db.execute(sql, params)`` with ``?`` placeholders, rows read by column name or index
(``row["name"]``, ``(n,) = row``, ``dict(row)``). :class:`PgConnection` keeps exactly that
surface over psycopg 3: ``?`` becomes ``%s`` (outside string literals; a literal ``%`` is
doubled), booleans are sent as 0/1 (the schema's INTEGER columns), rows are :class:`Row`.

Parameters are bound client-side (psycopg's ``ClientCursor``, quoted by libpq): a value compared
with a column of another type is coerced as SQLite would, and ``? IS NULL`` needs no type.

psycopg is imported only here, and this module only when a ``postgresql://`` URL is used: the
CLI's start-up and a SQLite store never load it. A URL's password is never shown: errors and
``repr`` use :func:`display_url`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mlcloud import sensitive
from mlcloud.errors import ConfigError, MlcloudError

SCHEMES = ("postgresql://", "postgres://")
#: ``pg_advisory_xact_lock`` keys: every write transaction takes WRITE_LOCK (the store's one
#: writer at a time, as SQLite's BEGIN IMMEDIATE); migrations take MIGRATE_LOCK.
WRITE_LOCK = 0x6D6C636C6F7564  # "mlcloud"
MIGRATE_LOCK = WRITE_LOCK + 1
KEY_LOCKS = 0x6D6C63  # the class (first int) of the per-key locks of keyed writes: (class, hash)
POOL_SIZE = 8  # idle connections kept per database, per process
_IDLE: dict[str, list[Any]] = {}
_POOL_LOCK = threading.Lock()
_QUERY_PASSWORD = re.compile(r"(?i)(password=)[^&\s]*")


class StoreUnavailable(MlcloudError):
    """The PostgreSQL state store cannot be reached (or psycopg is not installed)."""


def is_url(locator: str) -> bool:
    return locator.startswith(SCHEMES)


def display_url(url: str) -> str:
    """``url`` with its password (user-info or ``?password=``) masked: safe to print."""
    return _QUERY_PASSWORD.sub(rf"\g<1>{sensitive.REDACTED}", sensitive.redact_value("url", url))


def without_password(url: str) -> str:
    """``url`` with no password at all: what is written down for other processes (the local
    supervisor), which take the password from their environment (see :func:`with_password`)."""
    parts = urlsplit(url)
    query = "&".join(
        p for p in parts.query.split("&") if p and not p.lower().startswith("password=")
    )
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def with_password(locator: str, environ: Mapping[str, str]) -> str:
    """The URL to connect to for ``locator``: ``MLCLOUD_DATABASE_URL`` when it names the same
    database (it carries the password), else ``locator`` (libpq then reads PGPASSWORD or
    ~/.pgpass)."""
    env_url = environ.get("MLCLOUD_DATABASE_URL", "")
    if is_url(env_url) and without_password(env_url) == without_password(locator):
        return env_url
    return locator


class Row:
    """A result row like ``sqlite3.Row``: by index, by column name, unpackable, ``dict(row)``."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: Mapping[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = tuple(values)

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and self.keys() == other.keys()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Any:
    names = [c.name for c in cursor.description or ()]
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(name, i)  # a repeated name: the first column, as sqlite3.Row

    def make(values: Sequence[Any]) -> Row:
        return Row(index, values)

    return make


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s``; every ``%`` doubled (psycopg reads ``%``
    as a placeholder anywhere, even inside a string literal). ``?`` inside quotes is kept."""
    out: list[str] = []
    quote: str | None = None
    for char in sql:
        if char == "%":
            out.append("%%")
            continue
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        out.append(char)
    return "".join(out)


def _params(params: Sequence[Any] | Mapping[str, Any]) -> Sequence[Any]:
    if isinstance(params, Mapping):
        raise TypeError("named parameters are not supported by the store: use ? placeholders")
    return [int(p) if isinstance(p, bool) else p for p in params]


class PgConnection:
    """A psycopg connection (autocommit) with the ``sqlite3.Connection.execute`` surface.

    Closing it returns a healthy, idle connection to this process's pool (:func:`connect` takes
    from it): opening a store per API call then costs no new server session (~5 ms each)."""

    def __init__(self, conn: Any, url: str) -> None:
        self._conn = conn
        self.url = url  # never printed: see __repr__
        self._pid = os.getpid()
        self._closed = False

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        """Run one statement; returns the cursor (``fetchone``, ``fetchall``, iteration,
        ``rowcount``). Without parameters the SQL is sent as written."""
        if self._closed:  # its session may serve another store now
            raise StoreUnavailable("this state store connection is closed")
        if not params:
            return self._conn.execute(sql)
        return self._conn.execute(translate(sql), _params(params))

    def lock_for_write(self, key: str | None) -> None:
        """Inside a transaction: the store's write lock, exclusive; with a ``key``, shared, plus
        the key's own lock (a 32-bit hash of it: a collision only serialises two keys)."""
        if key is None:
            self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
        else:
            self.execute(
                "SELECT pg_advisory_xact_lock_shared(?), pg_advisory_xact_lock(?, hashtext(?))",
                (WRITE_LOCK, KEY_LOCKS, key),
            )

    def transaction(self) -> Any:
        """``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` on an exception); nested: a savepoint."""
        return self._conn.transaction()

    @property
    def broken(self) -> bool:
        return bool(self._closed or self._conn.closed or self._conn.broken)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:  # inherited across a fork: the parent's session, not ours
            return
        if not (self._conn.closed or self._conn.broken) and self._conn.info.transaction_status == 0:
            with _POOL_LOCK:  # 0: idle, no transaction left open
                idle = _IDLE.setdefault(self.url, [])
                if len(idle) < POOL_SIZE:
                    idle.append(self._conn)
                    return
        self._conn.close()

    def __repr__(self) -> str:
        return f"PgConnection({display_url(self.url)!r})"


def connect(url: str) -> PgConnection:
    """Connect to ``url`` (autocommit; READ COMMITTED, which the write lock needs: each
    statement after ``pg_advisory_xact_lock`` sees every transaction committed before it)."""
    with _POOL_LOCK:
        idle = _IDLE.get(url) or []
        while idle:
            conn = idle.pop()
            if not (conn.closed or conn.broken):
                return PgConnection(conn, url)
    try:
        import psycopg
    except ImportError as exc:
        raise StoreUnavailable(
            f"the state store {display_url(url)} is PostgreSQL, but psycopg is not installed",
            hint="pip install 'mlcloud[postgres]'",
        ) from exc
    try:
        conn = psycopg.Connection.connect(
            url,
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
            row_factory=_row_factory,
            application_name="mlcloud",
            options="-c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000",
            connect_timeout=10,
        )
    except psycopg.ProgrammingError:  # a malformed URL: its message may quote it
        raise ConfigError(
            f"MLCLOUD_DATABASE_URL {display_url(url)} is not a valid PostgreSQL URL",
            hint="postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
        ) from None
    except psycopg.OperationalError as exc:
        # libpq's message names the host and user, never the password; the URL is masked.
        reason = display_url(" ".join(str(exc).split()))
        raise StoreUnavailable(
            f"cannot connect to the state store {display_url(url)}: {reason}",
            hint="check MLCLOUD_DATABASE_URL and that the PostgreSQL server is running",
        ) from None
    conn.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
    return PgConnection(conn, url)


def close_idle() -> None:
    """Close this process's pooled connections (before a fork; at exit)."""
    with _POOL_LOCK:
        conns = [c for idle in _IDLE.values() for c in idle]
        _IDLE.clear()
    for conn in conns:
        conn.close()


def _forget_idle() -> None:
    # A forked child must neither use nor close its parent's sessions: dropped, not closed
    # (psycopg does not end a session it collects in another process than its own).
    _IDLE.clear()


os.register_at_fork(after_in_child=_forget_idle)
