"""Prediction connections without uvicorn's per-request machinery.

Why: measured at concurrency 1, once a local endpoint's predictions went straight to its model
servers, what the gateway still added was its own CPU per request (0.20 ms, against the local
front's 0.10 ms for the same proxying), and a good part of it was uvicorn's request cycle
around each prediction even on the protocol's fast path (:mod:`.predict_protocol`): the
parser's per-header callbacks and scope dict, a cycle object and its event, the response
bookkeeping and keep-alive timer.

How: a connection starts *lean*. Its bytes are buffered; each request head (up to the blank
line) is parsed by its own llhttp parser and, when it is exactly what the fast path answers (a
``POST /v1/endpoints/{name}:predict`` with a Content-Length of at most ``STREAM_MIN``, no
Transfer-Encoding, Expect or Upgrade: ``fastpath.eligible``), it is answered as soon as its
body is in, by ``fastpath.answer`` (token, rate limit, body limit, target, metrics, problem
JSON), in one ``write``, pipelined requests in order. The first request that is anything else
(another route, a chunked body, a malformed head) and everything after it on that connection
are fed to uvicorn's own parser, which starts at that request's first byte, so uvicorn answers
them exactly as it would have (its predictions still take :class:`PredictCycle`). Connection
bookkeeping stays uvicorn's: the connection set, graceful shutdown (an answer in flight
finishes, then the connection closes), the keep-alive timeout, write flow control, the request
count. Only predictions' connections are lean: a CLI's or a browser's are uvicorn's from their
first request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from mlcloud.server import fastpath
from mlcloud.server import gateway as gw
from mlcloud.server.observe import log_access
from mlcloud.server.predict_protocol import (
    _HANDS_OFF,
    PredictProtocol,
    encode,
    uvicorn_access_line,
)

_START = b"POST " + fastpath.PREFIX.encode()
#: bytes buffered while a prediction is answered before reading pauses (pipelined requests)
_PENDING_MAX = 2 * (gw.STREAM_MIN + 16 * 1024)
#: a head longer than this is not looked at here (uvicorn's parser takes the connection)
_HEAD_MAX = 16 * 1024
_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
)


class _Head:
    """One request head, parsed by llhttp: the URL and the headers (names lower-cased)."""

    __slots__ = ("complete", "headers", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.complete = True


class LeanProtocol(PredictProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lean = self.fast  # uvicorn's from the start where the fast path cannot answer
        self._buffer = bytearray()
        self._busy = False  # a prediction is being answered
        self._closing = False  # the server is shutting down: close after that answer

    # ---- asyncio.Protocol / uvicorn ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if not self.lean:
            super().data_received(data)
            return
        self._unset_keepalive_if_required()
        self._buffer += data
        if not self._busy:
            self._next()
        elif len(self._buffer) > _PENDING_MAX:
            self.flow.pause_reading()

    def shutdown(self) -> None:
        if self.lean and self._busy:
            self._closing = True  # the answer in flight goes out first
            return
        super().shutdown()

    # ---- lean requests -------------------------------------------------------------------
    def _next(self) -> None:
        """Answer the next buffered request if it is a whole prediction, wait for more bytes
        if it may become one, else hand the connection to uvicorn."""
        buffer = self._buffer
        if not buffer:
            return
        if not (buffer.startswith(_START) or _START.startswith(buffer)):
            self._hand_over()
            return
        end = buffer.find(b"\r\n\r\n")
        seen = buffer if end < 0 else buffer[:end]
        if seen.count(b"\n") != seen.count(b"\r\n"):
            self._hand_over()  # bare LF line ends (llhttp takes them): its framing, not ours
            return
        if end < 0:
            if len(buffer) > _HEAD_MAX:
                self._hand_over()
            return
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(bytes(buffer[: end + 4]))
            url = httptools.parse_url(head.url)
            path = url.path.decode("ascii")
        except (httptools.HttpParserError, UnicodeDecodeError):
            self._hand_over()  # uvicorn's answer to it (a 400), as ever
            return
        if "%" in path:
            path = unquote(path)
        found = fastpath.eligible("POST", path, head.headers, _HANDS_OFF) if head.complete else None
        if found is None:
            self._hand_over()
            return
        name, wanted = found
        size = end + 4 + int(wanted[b"content-length"])
        if len(buffer) < size:
            return  # its body is still coming
        body = bytes(buffer[end + 4 : size])
        del buffer[:size]
        version = parser.get_http_version()
        keep_alive = version != "1.0" and parser.should_keep_alive()
        scope = {
            "type": "http", "http_version": version, "method": "POST", "path": path,
            "raw_path": url.path, "query_string": url.query or b"", "root_path": "",
            "scheme": self.scheme, "server": self.server, "client": self.client,
            "headers": head.headers, "state": self.app_state.copy(),
        }  # fmt: skip
        self._busy = True
        task = self.loop.create_task(self._answer(scope, name, wanted, body, keep_alive))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _hand_over(self) -> None:
        """From this request on, the connection is uvicorn's (nothing of it was parsed by
        uvicorn yet, so its parser starts at this request's first byte)."""
        self.lean = False
        data, self._buffer = bytes(self._buffer), bytearray()
        super().data_received(data)

    async def _answer(
        self, scope: Any, name: str, wanted: fastpath.Headers, body: bytes, keep_alive: bool
    ) -> None:
        start, status = time.perf_counter(), 500
        try:
            response = await fastpath.answer(
                self.app_state_of_app, scope, name, wanted, lambda: _ready(body)
            )
            assert response is not None  # the body is all here: the caller cannot be gone
            status = response.status_code
            found = encode(response, self.server_state.default_headers, keep_alive)
            if found is None:  # streamed, or a header uvicorn's writer would refuse
                keep_alive = await self._by_uvicorn(scope, response, body, keep_alive)
            else:
                whole, keep_alive = found
                if self.flow.write_paused:
                    await self.flow.drain()
                if not self.transport.is_closing():
                    if self.access_log:
                        uvicorn_access_line(self.access_logger, scope, status)
                    self.transport.write(whole)
        except Exception as exc:  # as uvicorn's cycle: logged, a 500, the connection closed
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.transport.is_closing():
                self.transport.write(_500)
            keep_alive = False
        finally:
            log_access("POST", scope["path"], status, start, scope["state"])
            self._done(keep_alive)

    async def _by_uvicorn(self, scope: Any, response: Any, body: bytes, keep_alive: bool) -> bool:
        """Send ``response`` with uvicorn's own ``send`` (a cycle made for it)."""
        cycle = RequestResponseCycle(
            scope, self.transport, self.flow, self.logger, self.access_logger, self.access_log,
            self.server_state.default_headers, asyncio.Event(), False, keep_alive, _nothing,
        )  # fmt: skip
        cycle.body, cycle.more_body = bytearray(body), False
        try:
            await response(scope, cycle.receive, cycle.send)
        except Exception:
            if not cycle.response_started:
                raise  # nothing went out: the caller's 500
            self.logger.exception("the answer broke off while it was sent")
            self.transport.close()
            return False
        return cycle.keep_alive and cycle.response_complete

    def _done(self, keep_alive: bool) -> None:
        """After an answer: close, the next pipelined request, or wait (keep-alive timeout)."""
        self._busy = False
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if not keep_alive or self._closing:
            self.transport.close()
            return
        self.flow.resume_reading()
        self._next()
        if self.lean and not self._busy and not self._buffer:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )


async def _ready(body: bytes) -> bytes:
    return body


def _nothing() -> None:
    pass
