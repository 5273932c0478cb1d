"""A real PostgreSQL server for the tests, from the machine's own binaries (``initdb``, ``pg_ctl``).

One server per test session, in a private temporary directory: a Unix socket there, and
127.0.0.1 on a free port (password auth, for the tests of credentials); no other address. Each
test module gets its own database (``pg_database``); ``pg_url`` empties it before each test.
``store_backend`` runs a test once per backend, with ``MLCLOUD_DATABASE_URL`` set for PostgreSQL,
so ``Store.open()`` is the store under test. Without the binaries (or psycopg) the PostgreSQL
cases skip and say why. Registered by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PG_PASSWORD = "s3cret-pg-pw"  # the TCP role's password: tests check it never shows
_SEARCH = ["/usr/local/bin", *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
_names = itertools.count()


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (f"{d}/{name}" for d in _SEARCH if os.access(f"{d}/{name}", os.X_OK)), None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    root: Path
    port: int
    user: str = "mlcloud"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def url(self, database: str = "postgres") -> str:
        """A Unix-socket URL (trust auth: no password)."""
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}&port={self.port}"

    def tcp_url(self, database: str) -> str:
        """A 127.0.0.1 URL with the password role ``pwuser``."""
        return f"postgresql://pwuser:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, prefix: str = "t") -> str:
        """A new, empty database; returns its Unix-socket URL."""
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        self.admin(f'CREATE DATABASE "{name}" OWNER pwuser')
        return self.url(name)


def _run(argv: list[str], owner: pwd.struct_passwd | None, root: Path) -> None:
    """Run a PostgreSQL binary, as ``owner`` when we are root (initdb refuses root)."""
    ids: dict[str, Any] = {}
    if owner is not None:
        ids = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "HOME": str(root)}
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, **ids)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


class PgUnavailable(RuntimeError):
    """No PostgreSQL to start here (the reason says why)."""


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PgUnavailable("running as root with no 'postgres' or 'nobody' user to run it as")


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """A fresh PostgreSQL server for as long as the block runs; stopped and deleted after."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PgUnavailable(f"initdb/pg_ctl not found on PATH or in {', '.join(_SEARCH)}")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("psycopg is not installed: pip install 'mlcloud[postgres]'") from None
    owner = _owner()
    root = Path(tempfile.mkdtemp(prefix="mlcloud-pg-"))
    server = PgServer(root, _free_port())
    server.socket_dir.mkdir()
    if owner is not None:
        for path in (root, server.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data = root / "data"
    try:
        _run([initdb, "-D", str(data), "-U", server.user, "-E", "UTF8", "--no-sync",
              "--auth-local=trust", "--auth-host=scram-sha-256"], owner, root)  # fmt: skip
        # Loopback only; durability off (a test server): fsync, full-page writes.
        options = (
            f"-k {server.socket_dir} -p {server.port} -c listen_addresses=127.0.0.1 -F "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=300"
        )
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "pg.log"), "-w",
              "-t", "60", "start"], owner, root)  # fmt: skip
        try:
            server.admin(f"CREATE ROLE pwuser LOGIN PASSWORD '{PG_PASSWORD}'")
            yield server
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], owner, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server; the tests that need it skip, saying why, without one."""
    try:
        with running_server() as server:
            yield server
    except PgUnavailable as exc:
        pytest.skip(f"no PostgreSQL server for this test: {exc}")


@pytest.fixture(scope="module")
def pg_database(pg_server: PgServer) -> str:
    """This test module's database (its URL); ``pg_url`` empties it between tests."""
    return pg_server.create_database("m")


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """The module's database with every table emptied (the schema kept)."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_migrations'"
        ).fetchall()
        if rows:
            tables = ", ".join(f'"{r[0]}"' for r in rows)
            conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
    yield pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on both backends: ``Store.open()`` is SQLite under the test's
    ``$MLCLOUD_HOME``, or this module's (emptied) PostgreSQL database."""
    if request.param == "postgresql":
        monkeypatch.setenv("MLCLOUD_DATABASE_URL", request.getfixturevalue("pg_url"))
    return str(request.param)
