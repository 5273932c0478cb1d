"""A spinner on stderr while a long step runs (rich, only on a terminal), or a caller's callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Progress:
    """``with Progress(callback, "deploying") as show: show("waiting for /readyz")``."""

    def __init__(self, callback: Callable[[str], None] | None, title: str = "working") -> None:
        self.callback = callback
        self.title = title
        self._status: Any = None

    def __enter__(self) -> Callable[[str], None]:
        if self.callback is not None:
            return self.callback
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            return lambda _msg: None
        self._status = console.status(self.title)
        self._status.__enter__()
        return lambda msg: self._status.update(msg)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
