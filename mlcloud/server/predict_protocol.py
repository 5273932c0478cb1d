"""The server's HTTP protocol: uvicorn's httptools protocol, with predictions answered on it.

Why: after the ASGI fast path (:mod:`mlcloud.server.fastpath`) the gateway's cost per
prediction was mostly uvicorn's ASGI machinery around it (the middleware stack, the access-log
middleware, two ``send`` messages checked header by header, the head and the body in two
writes), and at concurrency 1 all of it is latency. Here a request that is exactly
``POST /v1/endpoints/{name}:predict`` with a Content-Length of at most ``STREAM_MIN`` and no
Transfer-Encoding, Expect or Upgrade is answered by the fast path's own decision and answer
(``fastpath.eligible`` / ``fastpath.answer``: token, rate limit, body limit, target, problem
JSON, ``x-mlcloud-version``, metrics) straight from the protocol, with the access-log line the
middleware writes, in one ``write``. Everything else goes to uvicorn's path untouched.

It rides on uvicorn's own request cycle (a subclass whose ``run_asgi`` answers the prediction),
so keep-alive, pipelining order, flow control, disconnects, the keep-alive timeout and graceful
shutdown stay uvicorn's; an answer that is not one buffered body (a streamed upstream answer)
is written by uvicorn's ``send``. ``http_protocol()`` checks that the uvicorn installed has the
internals this relies on, and falls back to uvicorn's plain protocol (logged) when it does not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, cast
from urllib.parse import unquote

import httptools
from starlette.responses import Response, StreamingResponse
from starlette.types import Scope
from uvicorn.config import Config
from uvicorn.protocols.http import httptools_impl as impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from mlcloud.server import fastpath
from mlcloud.server.observe import log_access

log = logging.getLogger("mlcloud.server")
_PREFIX = fastpath.PREFIX.encode()
#: a request with any of these is uvicorn's (streamed, 100-continue, upgraded)
_HANDS_OFF = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_CYCLE_ARGS = ("scope", "transport", "flow", "logger", "access_logger", "access_log",
               "default_headers", "message_event", "expect_100_continue", "keep_alive",
               "on_response")  # fmt: skip


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http=``: :class:`PredictProtocol` with its lean connections
    (:mod:`.predict_lean`), or ``"auto"`` (logged) when the uvicorn installed lacks an internal
    it relies on."""
    missing = _missing()
    if missing:
        log.warning("predictions take uvicorn's ASGI path: this uvicorn lacks %s", missing)
        return "auto"
    from mlcloud.server.predict_lean import LeanProtocol

    return LeanProtocol


def _missing() -> list[str]:
    wanted = {
        HttpToolsProtocol: (
            "_start_asgi_task",
            "on_response_complete",
            "on_headers_complete",
            "_unset_keepalive_if_required",
            "timeout_keep_alive_handler",
            "shutdown",
        ),  # the last three: predict_lean
        RequestResponseCycle: ("run_asgi", "send", "receive", "send_500_response"),
    }
    missing = [f"{k.__name__}.{a}" for k, attrs in wanted.items() for a in attrs
               if not hasattr(k, a)]  # fmt: skip
    missing += [f"httptools_impl.{a}" for a in ("STATUS_LINE", "HEADER_VALUE_RE", "HEADER_RE")
                if not hasattr(impl, a)]  # fmt: skip
    if tuple(inspect.signature(RequestResponseCycle).parameters) != _CYCLE_ARGS:
        missing.append("RequestResponseCycle(" + ", ".join(_CYCLE_ARGS) + ")")
    return missing


class PredictProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.app_state_of_app = _state_of(self.app)
        # a mounted root path or a concurrency limit: uvicorn's path answers (its rules)
        self.fast = (
            self.app_state_of_app is not None and not self.root_path
            and self.limit_concurrency is None
        )  # fmt: skip

    def on_headers_complete(self) -> None:
        found = self._predict() if self.fast else None
        if found is None:
            super().on_headers_complete()
            return
        keep_alive = self.scope["http_version"] != "1.0" and self.parser.should_keep_alive()
        existing = self.cycle
        self.cycle = cycle = PredictCycle(self, *found, keep_alive)
        if existing is None or existing.response_complete:  # as uvicorn queues its cycles
            self._start_asgi_task(cycle, self.app)
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def _predict(self) -> tuple[str, fastpath.Headers] | None:
        """The endpoint and headers of a prediction this protocol answers; its scope filled
        as uvicorn fills it."""
        if not self.url.startswith(_PREFIX) or self.parser.get_method() != b"POST":
            return None
        try:
            url = httptools.parse_url(self.url)
            path = url.path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return None  # uvicorn's answer to it, as ever
        if "%" in path:
            path = unquote(path)
        found = fastpath.eligible("POST", path, self.headers, _HANDS_OFF)
        if found is not None:
            scope = self.scope
            scope["method"], scope["path"], scope["raw_path"] = "POST", path, url.path
            scope["query_string"] = url.query or b""
            version = self.parser.get_http_version()
            if version != "1.1":
                scope["http_version"] = version
        return found


class PredictCycle(RequestResponseCycle):
    """One prediction: its body buffered as uvicorn buffers it, answered by the fast path."""

    def __init__(
        self, proto: PredictProtocol, name: str, headers: fastpath.Headers, keep_alive: bool
    ) -> None:
        super().__init__(
            proto.scope, proto.transport, proto.flow, proto.logger, proto.access_logger,
            proto.access_log, proto.server_state.default_headers, asyncio.Event(), False,
            keep_alive, proto.on_response_complete,
        )  # fmt: skip
        self.app_state, self.name, self.wanted = proto.app_state_of_app, name, headers

    async def run_asgi(self, app: Any) -> None:
        start, status, state = time.perf_counter(), 500, self.scope["state"]
        try:
            scope = cast(Scope, self.scope)
            response = await fastpath.answer(
                self.app_state, scope, self.name, self.wanted, self._body
            )
            if response is not None:
                status = response.status_code
                await self._respond(response)
        except BaseException as exc:  # as uvicorn's cycle: logged; a 500 if nothing went out
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self.transport.close()
        finally:
            self.on_response = _nothing
            log_access("POST", self.scope["path"], status, start, state)

    async def _body(self) -> bytes:
        while self.more_body and not self.disconnected:
            self.flow.resume_reading()
            self.message_event.clear()
            await self.message_event.wait()
        if self.disconnected:
            raise fastpath.ClientGone
        return bytes(self.body)

    async def _respond(self, response: Response) -> None:
        whole = self._encoded(response)
        if whole is None:  # streamed, or headers uvicorn's writer refuses: its own send
            await response(cast(Scope, self.scope), cast(Any, self.receive), cast(Any, self.send))
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        self.response_started = self.response_complete = True
        if self.access_log:
            self._uvicorn_access_line(response.status_code)
        self.transport.write(whole)
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _encoded(self, response: Response) -> bytes | None:
        """The whole answer, as uvicorn's ``send`` writes it; ``None`` if it would not."""
        found = encode(response, self.default_headers, self.keep_alive)
        if found is None:
            return None
        whole, self.keep_alive = found
        return whole

    def _uvicorn_access_line(self, status: int) -> None:
        uvicorn_access_line(self.access_logger, self.scope, status)


def uvicorn_access_line(logger: logging.Logger, scope: Any, status: int) -> None:
    """The line uvicorn's access log writes for a request."""
    logger.info(
        '%s - "%s %s HTTP/%s" %d', get_client_addr(scope), "POST",
        get_path_with_query_string(scope), scope["http_version"], status,
    )  # fmt: skip


def encode(
    response: Response, default_headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> tuple[bytes, bool] | None:
    """The whole answer as uvicorn's ``send`` writes it, and whether the connection stays
    open after it; ``None`` if uvicorn would not write it in one piece (a streamed body, a
    header it refuses, a length that does not match)."""
    if isinstance(response, StreamingResponse) or response.background is not None:
        return None
    content: list[bytes | memoryview] = [impl.STATUS_LINE[response.status_code]]
    sized = closing = False
    for name, value in default_headers:
        content += [name, b": ", value, b"\r\n"]
    for name, value in response.raw_headers:
        if impl.HEADER_RE.search(name) or impl.HEADER_VALUE_RE.search(value):
            return None
        name = name.lower()
        if name == b"content-length":
            sized = value.isdigit() and int(value) == len(response.body)
        elif name == b"connection":
            closing = closing or b"close" in [t.lower().strip() for t in value.split(b",")]
        content += [name, b": ", value, b"\r\n"]
    if not sized:
        return None
    if closing:
        keep_alive = False
    elif not keep_alive:
        content.append(b"connection: close\r\n")
    content += [b"\r\n", response.body]
    return b"".join(content), keep_alive


def _nothing() -> None:
    pass


def _state_of(app: Any) -> Any:
    """The ``state`` of the app under uvicorn's wrappers when the app has the predict fast path
    (``None``: not mlcloud's app, so uvicorn answers everything)."""
    for _ in range(8):
        middleware = getattr(app, "user_middleware", None)
        if middleware is not None:
            ours = any(m.cls is fastpath.PredictFastPath for m in middleware)
            return app.state if ours else None
        app = getattr(app, "app", None)
    return None
