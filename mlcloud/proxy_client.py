"""A proxy's client to its HTTP upstreams: pooled keep-alive HTTP/1.1 on asyncio protocols.

Why not aiohttp's ``ClientSession``: profiled at concurrency 1, the front spent about as much
CPU in the client half of a proxied request (request and response objects, the connector,
timers, payload writers) as in the server half, and at concurrency 1 every microsecond of it is
latency. This client does only what a proxy of JSON predictions needs: the request written in
one ``write``, the response parsed by llhttp (``httptools``, which uvicorn — so BentoML —
brings), a body buffered whole (the front answered with whole bodies before too), connections
kept per upstream and dropped after ``KEEPALIVE`` s idle, below uvicorn's 5 s, so the front
never reuses a connection the backend is closing. Anything else it raises as ``OSError`` (the
proxy's "nothing came back": retried elsewhere); ``HEAD`` and missing ``httptools`` go to
aiohttp's client instead (``available()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

KEEPALIVE = 2.0
CONNECT_TIMEOUT = 5.0


def available() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


class UpstreamGone(ConnectionError):
    """The upstream closed or broke the connection before a whole response came back."""


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]] | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.idle_since = 0.0
        self.broken = False
        self.loop = asyncio.get_running_loop()  # once: each lookup costs a getpid() syscall

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a request is one write: never wait on Nagle for its tail
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a malformed response: this connection is done
            self._fail(UpstreamGone(f"bad response from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._fail(UpstreamGone(f"upstream closed the connection ({exc or 'EOF'})"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if not self.parser.should_keep_alive():
            self.broken = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            status = int(self.parser.get_status_code())
            waiter.set_result((status, self.headers, b"".join(self.body)))

    def _fail(self, exc: Exception) -> None:
        self.broken = True
        if self.transport is not None:
            self.transport.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class UpstreamClient:
    """Keep-alive connections per upstream ``http://host:port``."""

    def __init__(self) -> None:
        self.idle: dict[str, list[_Conn]] = {}
        self._addr: dict[str, tuple[str, int, bytes]] = {}

    async def request(
        self, base: str, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, raw headers, body) of ``method base+target``; ``OSError`` if nothing came
        back."""
        # callers decoded header bytes as UTF-8 with surrogateescape: the exact bytes go back out
        block = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8", "surrogateescape")
        return await self.forward(base, method.encode(), target.encode(), block, body)

    async def forward(
        self, base: str, method: bytes, target: bytes, header_block: bytes, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """:meth:`request` for a caller that has the request's bytes already: ``header_block``
        is its header lines (each ending in CRLF, without Host and Content-Length)."""
        conn = await self._conn(base)
        host = self._addr[base][2]
        data = b"%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\n\r\n" % (
            method, target, host, header_block, len(body)
        )  # fmt: skip
        waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes]]
        conn.waiter = waiter = conn.loop.create_future()
        conn.headers, conn.body = [], []
        assert conn.transport is not None
        conn.transport.write(data + body)
        try:
            result = await waiter
        except BaseException:
            conn.broken = True
            if conn.transport is not None:
                conn.transport.close()
            raise
        self._release(base, conn)
        return result

    async def _conn(self, base: str) -> _Conn:
        pool = self.idle.get(base)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            fresh = now - conn.idle_since < KEEPALIVE
            if fresh and not conn.broken and conn.transport and not conn.transport.is_closing():
                return conn
            if conn.transport is not None:
                conn.transport.close()
        host, port, _ = self._address(base)
        loop = asyncio.get_running_loop()
        # A socket connected here, not a host handed to the loop: uvloop would resolve even an
        # IP literal on libuv's thread pool (threads slow the front's death, see front._listen).
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await _connect(loop, sock, (host, port))
            _, proto = await loop.create_connection(_Conn, sock=sock)
        except BaseException:
            sock.close()
            raise
        return proto

    def _address(self, base: str) -> tuple[str, int, bytes]:
        known = self._addr.get(base)
        if known is None:
            parts = urlsplit(base)
            known = (parts.hostname or "127.0.0.1", parts.port or 80, parts.netloc.encode())
            self._addr[base] = known
        return known

    def _release(self, base: str, conn: _Conn) -> None:
        if conn.broken or conn.transport is None or conn.transport.is_closing():
            return
        conn.idle_since = time.monotonic()
        self.idle.setdefault(base, []).append(conn)

    def close(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                if conn.transport is not None:
                    conn.transport.close()
        self.idle.clear()


async def _connect(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, address: tuple[str, int]
) -> None:
    """A non-blocking connect to an address already numeric (``loop.sock_connect`` under uvloop
    resolves it again, on its thread pool)."""
    try:
        sock.connect(address)
        return
    except BlockingIOError:
        pass
    writable: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not writable.done():
            writable.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"{os.strerror(error)} ({address[0]}:{address[1]})")


def header_pairs(raw: list[tuple[bytes, bytes]], drop: frozenset[str]) -> list[tuple[str, Any]]:
    """Response headers as ``str`` pairs, hop-by-hop ones left out."""
    out = []
    for k, v in raw:
        name = k.decode("latin-1")
        if name.lower() not in drop:
            out.append((name, v.decode("latin-1")))
    return out
