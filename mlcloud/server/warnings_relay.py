"""mlcloud's warnings reach the caller: each one a call raised becomes an ``x-mlcloud-warning``
header of its answer (its text JSON-encoded, so any text fits in a header), and the client
(``mlcloud.client.transport``) warns it again, so the CLI pointed at a server prints the same
``warning:`` lines as run locally (a re-deploy whose input signature could not be checked, a
registry alias the cloud's own registry did not take, …).

How: a process-wide ``warnings.showwarning`` hook (``install``) hands an ``MlcloudWarning`` to
the request it belongs to, found through a context variable the middleware sets; the
threadpool that runs ``mlcloud.api`` copies the context, so a warning raised there is found
too. Outside a request it is shown as before (the server's log). Every one is relayed, never
deduplicated by Python's once-per-place rule: each caller is told about its own call.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextvars import ContextVar
from typing import TextIO

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlcloud.errors import MlcloudWarning

HEADER = "x-mlcloud-warning"
_HEADER_RAW = HEADER.encode()
_collected: ContextVar[list[str] | None] = ContextVar("mlcloud_warnings", default=None)
log = logging.getLogger("mlcloud.server")


def install() -> None:
    """Route ``MlcloudWarning``s raised during a request to it (the app calls it; again is a
    no-op while the hook is in place)."""
    warnings.filterwarnings("always", category=MlcloudWarning)
    previous = warnings.showwarning
    if getattr(previous, "mlcloud_relay", False):
        return

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int,
        file: TextIO | None = None, line: str | None = None,
    ) -> None:  # fmt: skip
        box = _collected.get()
        if box is not None and issubclass(category, MlcloudWarning):
            box.append(str(message))
            log.info("warning relayed to the caller: %s", message)
            return
        previous(message, category, filename, lineno, file, line)

    show.mlcloud_relay = True  # type: ignore[attr-defined]
    warnings.showwarning = show


class RelayWarnings:
    """The ASGI middleware: collects the request's warnings, adds them to its answer's head."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        box: list[str] = []
        token = _collected.set(box)

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start" and box:
                extra = [(_HEADER_RAW, json.dumps(text).encode()) for text in box]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
                box.clear()  # a streamed answer's later warnings have no head to go in
            await send(message)

        try:
            await self.app(scope, receive, relay)
        finally:
            _collected.reset(token)
