"""The connection surface both backends offer the store's query code (see the package doc)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol


class Cursor(Protocol):
    """What ``db.execute`` returns on both backends."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """``store._db`` / ``store._tx()``: a ``sqlite3.Connection`` or a :class:`pg.PgConnection`."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...
    def close(self) -> None: ...
