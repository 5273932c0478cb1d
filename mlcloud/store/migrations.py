"""Versioned schema migrations: a plain, ordered list of SQL files (``sql/NNNN_name.sql``).

Each file is applied once, in order, inside one write transaction, and recorded in
``schema_migrations``; a store made by an older mlcloud (no such table: its tables came from
``0001``'s ``CREATE TABLE IF NOT EXISTS``) is upgraded in place on open. A file is never edited
once released: a change is a new file. A store that records a version this mlcloud does not know
was written by a newer mlcloud and is refused rather than misread.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from mlcloud.errors import MlcloudError

SQL_DIR = Path(__file__).with_name("sql")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(script: str) -> tuple[str, ...]:
    """SQL statements of a script (``executescript`` would commit the open transaction)."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"incomplete SQL statement at the end of a migration: {buffer[:80]!r}")
    return tuple(statements)


@cache
def migrations() -> tuple[Migration, ...]:
    found = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_name.sql")
        statements = split_statements(path.read_text(encoding="utf-8"))
        found.append(Migration(int(match[1]), match[2], statements))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {SQL_DIR}: {versions}")
    return tuple(found)


def _applied(db: sqlite3.Connection) -> set[int]:
    return {int(row[0]) for row in db.execute("SELECT version FROM schema_migrations")}


def migrate(db: sqlite3.Connection) -> list[int]:
    """Apply the migrations ``db`` lacks; returns the versions applied (usually none)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    known = {m.version for m in migrations()}
    if _applied(db) >= known:
        _refuse_newer(db, known)
        return []
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating the same file
    try:
        done, applied = _applied(db), []
        for migration in migrations():
            if migration.version in done:
                continue
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
            applied.append(migration.version)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return applied


def _refuse_newer(db: sqlite3.Connection, known: set[int]) -> None:
    newer = sorted(_applied(db) - known)
    if newer:
        raise MlcloudError(
            f"the state store has schema version(s) {newer} that this mlcloud does not know: "
            "a newer mlcloud wrote it",
            hint="upgrade mlcloud (pip install -U mlcloud) to use this store",
        )
