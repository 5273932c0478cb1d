"""The front's server half: HTTP/1.1 on an asyncio protocol, requests parsed by llhttp.

Why not aiohttp's web server (the front's until wave 5): profiled at concurrency 1, most of a
proxied request's cost in the front was aiohttp's request, response, middleware, router and
stream objects around two small JSON bodies, and at concurrency 1 all of it is latency. Here a
request is parsed by ``httptools`` (llhttp, which uvicorn, so BentoML, brings), buffered whole
(the proxy sends it upstream in one write) and answered in one ``write``: six system calls per
proxied request. Measured (an A/B, both fronts before the same trivial upstream, wrk
runs interleaved, shared 2-core machine): CPU per proxied request 127 -> 50 us at concurrency
1, 85 -> 33 us at 8, 72 -> 31 us at 32.

What a client sees is HTTP/1.1 as before: keep-alive (HTTP/1.0 ``keep-alive`` too), pipelined
requests answered in order, chunked request bodies, ``Expect: 100-continue``, ``HEAD`` answered
without a body, 400 for a malformed request, 413 past ``max_body``, 408 for a head or body that
does not complete in time (``front_conn.py``: the phases, their deadlines, the connection cap).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

from providers.local.front_conn import (
    BACKLOG,
    BODY,
    BUSY,
    BUSY_503,
    HEAD,
    HEAD_408,
    IDLE,
    LINGER,
    Connections,
)

log = logging.getLogger("mlcloud.front")

_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_JSON = b"Content-Type: application/json; charset=utf-8\r\n"
_CLOSE = b"Connection: close\r\n"
_KEEP = b"Connection: keep-alive\r\n"
_FOREVER = float("inf")


class Request:
    """One parsed request: raw bytes, as they came (``headers`` in order, names as sent)."""

    __slots__ = ("body", "early", "expect", "headers", "http10", "keep_alive", "method", "parts",
                 "target")  # fmt: skip

    def __init__(self) -> None:
        self.method = b""  # set once the head is complete
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.parts: list[bytes] = []
        self.body = b""
        self.keep_alive = True
        self.http10 = False
        self.expect = False  # Expect: 100-continue
        self.early: Response | None = None  # answered from its head alone: the body is dropped


class Response:
    """What a handler answers. ``headers``: header lines, each ending in CRLF, without
    Content-Length and Connection (the server adds both); ``length``: the Content-Length to
    announce when it is not ``len(body)`` (a proxied ``HEAD``), or ``None`` for none."""

    __slots__ = ("body", "headers", "length", "status")

    def __init__(self, status: int, headers: bytes, body: bytes, length: int | None = -1) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.length = len(body) if length == -1 else length


Handler = Callable[[Request], Awaitable[Response]]
#: looks at a request's head: the answer when its body need not be read (a bad token), or None
HeadCheck = Callable[[Request], "Response | None"]


def date_line(_cache: list[Any] = [0, b""]) -> bytes:  # noqa: B006 (a per-second cache)
    now = int(time.time())
    if now != _cache[0]:
        _cache[:] = [now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()]
    return cast(bytes, _cache[1])


def json_response(status: int, data: Any, extra: bytes = b"") -> Response:
    """``data`` as JSON (what aiohttp's ``json_response`` wrote); ``extra``: more header lines."""
    return Response(status, _JSON + date_line() + extra, json.dumps(data).encode())


def _closing(resp: Response) -> bytes:
    """A whole response that closes the connection."""
    return b"%s%s%sContent-Length: %d\r\n\r\n%s" % (
        _STATUS[resp.status], resp.headers, _CLOSE, len(resp.body), resp.body
    )  # fmt: skip


def _error_bytes(status: int, message: str) -> bytes:
    return _closing(json_response(status, {"error": message}))


class _Stop(Exception):
    """Raised from a parser callback: the request was answered; parse nothing more."""


class FrontConn(asyncio.Protocol):
    """One client connection: parsing, the phases of ``front_conn.py``, answers in order."""

    def __init__(
        self, handler: Handler, conns: Connections, max_body: int, check: HeadCheck | None = None
    ) -> None:
        self.handler = handler
        self.check = check
        self.conns = conns
        self.limits = conns.limits
        self.max_body = max_body
        self.phase = IDLE
        self.deadline = _FOREVER
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._loop = asyncio.get_running_loop()
        self._req: Request | None = None  # being parsed
        self._size = 0
        self._pending: deque[Request] = deque()  # pipelined, complete, not yet handled
        self._busy = False  # a request is with the handler
        self._dead = False  # answered for good: input is dropped until the connection closes
        self._half_closed = False  # the client sent EOF: close once the answers are out
        self._admitted = False
        self._linger: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only weak ones

    # ---- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = transport = cast(asyncio.Transport, transport)
        if not self.conns.admit(self):
            # Every slot has a request in flight: say so at once, never queue the client.
            self._dead = True
            self._refuse(transport)
            return
        self._admitted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:  # an answer is one write: never wait on Nagle for its tail
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.deadline = self._loop.time() + self.limits.idle_timeout

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Send the 503, then read and drop what the client sends until it closes or
        ``LINGER`` s pass: closing with its request unread would reset the connection before
        the client reads the 503. Past ``BACKLOG`` such connections, close at once."""
        transport.write(BUSY_503)
        if self.conns.lingering >= BACKLOG or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.conns.lingering += 1
        self._linger = self._loop.call_later(LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return  # answered for good (refused, 413, 408): the rest is dropped unread
        if self.phase == IDLE:
            self.phase = HEAD
            self.deadline = self._loop.time() + self.limits.header_timeout
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._req = None  # an upgrade is not proxied: answer what came, then close
            self._half_closed = True
        except Exception as exc:
            if not self._dead:  # not our own _Stop: a malformed request
                self._answer_and_close(_error_bytes(400, f"malformed HTTP request: {exc}"))

    def eof_received(self) -> bool | None:
        if self._busy:
            self._half_closed = True  # answer what is in flight first
            return True
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.forget(self)
        self.transport = None
        self._dead = True
        if self._linger is not None:
            self._linger.cancel()
            if not self._admitted:
                self.conns.lingering -= 1

    # ---- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._req = Request()
        self._size = 0

    def on_url(self, url: bytes) -> None:
        assert self._req is not None
        self._req.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._req is not None
        self._req.headers.append((name, value))
        low = name.lower()
        if low == b"expect":
            self._req.expect = value.lower() == b"100-continue"
        elif low == b"content-length" and value.isdigit() and int(value) > self.max_body:
            self._too_large()

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        req.method = self.parser.get_method()
        if req.target[:1] != b"/":
            req.target = _origin_form(req.target)
        req.keep_alive = self.parser.should_keep_alive()
        req.http10 = self.parser.get_http_version() == "1.0"
        if not self._busy:
            self.phase = BODY
            self.deadline = self._loop.time() + self.limits.body_timeout
        if self.check is not None:
            req.early = self.check(req)
        if req.expect and not req.http10 and self.transport is not None:
            if req.early is not None:  # the client waits to send its body: answer now, close
                self._answer_and_close(_closing(req.early))
                raise _Stop
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        assert self._req is not None
        self._size += len(body)
        if self._size > self.max_body:
            self._too_large()
        if self._req.early is None:  # else never buffered: a bad token costs no memory
            self._req.parts.append(body)

    def on_message_complete(self) -> None:
        req, self._req = self._req, None
        assert req is not None
        parts = req.parts
        req.body = parts[0] if len(parts) == 1 else b"".join(parts)
        req.parts = []
        if self._busy:
            self._pending.append(req)
            if self.transport is not None:
                self.transport.pause_reading()  # one pipelined request ahead is plenty
            return
        self._start(req)

    # ---- answering ----------------------------------------------------------------------
    def _start(self, req: Request) -> None:
        self._busy = True
        self.phase = BUSY
        self.deadline = _FOREVER
        self._task = self._loop.create_task(self._run(req))

    async def _run(self, req: Request) -> None:
        try:
            resp = req.early if req.early is not None else await self.handler(req)
        except Exception:
            log.exception("the front failed on %s %r", req.method, req.target)
            resp = json_response(500, {"error": "internal error in the endpoint's front"})
        self._write(req, resp)
        self._next(req.keep_alive)

    def _write(self, req: Request, resp: Response) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client went away; the upstream's answer was still counted
        close = not req.keep_alive or self._half_closed
        conn = _CLOSE if close else _KEEP if req.http10 else b""
        status = resp.status
        no_body = status in (204, 304) or status < 200  # may not say a length (RFC 9110 §8.6)
        n = None if no_body else resp.length
        length = b"" if n is None else b"Content-Length: %d\r\n" % n
        head = b"%s%s%s%s\r\n" % (_STATUS.get(status) or _status(status), resp.headers, length,
                                  conn)  # fmt: skip
        bodiless = no_body or req.method == b"HEAD"
        transport.write(head if bodiless else head + resp.body)

    def _next(self, keep_alive: bool) -> None:
        """After an answer: close, the next pipelined request, or the phase of what is left."""
        self._busy = False
        if self.transport is None:
            return
        transport = self.transport
        if self._dead or not keep_alive or (self._half_closed and not self._pending):
            self.close()
            return
        if self._pending:
            self._start(self._pending.popleft())
            if not self._pending:
                transport.resume_reading()
            return
        now = self._loop.time()
        if self._req is None:
            self.phase, self.deadline = IDLE, now + self.limits.idle_timeout
        elif not self._req.method:  # the next request's head is partly in
            self.phase, self.deadline = HEAD, now + self.limits.header_timeout
        else:
            self.phase, self.deadline = BODY, now + self.limits.body_timeout

    def _too_large(self) -> None:
        message = f"request body is larger than the limit of {self.max_body} bytes"
        self._answer_and_close(_error_bytes(413, message))
        raise _Stop

    def _answer_and_close(self, answer: bytes) -> None:
        """Answer now and end the connection: what the client still sends is read and dropped
        for ``LINGER`` s (closing with it unread would reset the connection before the client
        reads the answer)."""
        self._dead = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._busy:  # an answer is in flight: send it, then close (_next)
            self._half_closed = True
            return
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
            self.phase, self.deadline = IDLE, self._loop.time() + LINGER
        else:
            self.close()

    # ---- the guard (front_conn.Connections) ---------------------------------------------
    def expire(self) -> None:
        """The phase's deadline passed (the sweep calls this)."""
        self.deadline = _FOREVER
        if self.phase == HEAD and not self._dead:
            self.conns.counts["head_timeouts"] += 1
            self.close(HEAD_408)
        elif self.phase == BODY and not self._dead:
            timeout = self.limits.body_timeout
            message = f"the request body was not complete within {timeout:.0f}s"
            self._answer_and_close(_error_bytes(408, message))
        elif self.phase != BUSY:
            self.close()

    def close(self, last_words: bytes = b"") -> None:
        """Close now, after ``last_words`` (a complete HTTP response) if any."""
        self.conns.forget(self)
        self._dead = True
        if self.transport is not None and not self.transport.is_closing():
            if last_words:
                self.transport.write(last_words)
            self.transport.close()


def _origin_form(target: bytes) -> bytes:
    """``/path?query`` of an absolute-form target (``http://host/path?query``), as aiohttp's
    ``raw_path_qs`` gave; other forms (``*``, authority) are passed on as they came."""
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return target
    if not url.schema:
        return target
    path = url.path or b"/"
    return path + b"?" + url.query if url.query else path


def _status(code: int) -> bytes:
    return b"HTTP/1.1 %d Unknown\r\n" % code
