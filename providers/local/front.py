"""The stable front of a local endpoint: a tiny HTTP reverse proxy, one process per endpoint.

Why a front at all: a model update must not change the address callers use, and must not fail
a single request. The front owns the endpoint's port for the endpoint's whole life; the BentoML
servers behind it come and go on private 127.0.0.1 ports.

Design (the simplest one that is sound):

* The upstream list lives in ``<state dir>/upstreams.json`` (``{"generation": n, "upstreams":
  [url, ...], "servers": [{url, pid, create_time, log}, ...], "versions": {id: {weight,
  upstreams}}}``, ``front_upstreams.py``). The deployer replaces it atomically (write +
  ``os.replace``); the front re-reads it whenever its ``stat`` changes, looked at every 50 ms
  from the request path and at once on the control path. No control port exists, so there is
  nothing extra to secure.
* ``GET /-/mlcloud/front`` reloads the file and answers the generation in force, the number
  of requests in flight per upstream and the connection counts. The deployer uses it to confirm
  a switch and then to wait until the old servers have drained before stopping them.
* Requests go to the model versions by weight (a canary's share, exactly), round-robin over a
  version's servers that are up; each response carries ``x-mlcloud-version``, and
  ``GET /-/stats`` answers per-version counts and latencies (``front_stats.py``). A request
  that could not reach its upstream (connection refused/reset before a response) is retried:
  model predictions are pure, so a retry is safe, and it covers a backend that died or was
  stopped.
* Pooled keep-alive connections expire before the backends' own idle timeout, so the front never
  reuses a connection the backend is closing.
* When bound beyond loopback, every request needs ``Authorization: Bearer <token>``, compared in
  constant time. The token arrives on stdin (never argv, env or the state store).
* The HTTP server is a lean asyncio protocol (``front_http.py``: llhttp, one write per answer).
* Slow and many clients: a connection cap and idle/header/body deadlines (``front_conn.py``).
  Its log is rate-limited and rotated (``front_log.py``). It restarts dead servers of the
  generation in force (``front_watch.py``).

Run: ``python -m providers.local.front --host H --port P --state-dir D [--token-stdin]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from mlcloud import proxy_client as front_client
from providers.local.front_conn import BACKLOG, BUSY, Connections, Limits
from providers.local.front_http import FrontConn, Request, Response, json_response
from providers.local.front_stats import GATEWAY_STATS_DIR, GatewayCounts, Stats
from providers.local.front_upstreams import UPSTREAMS_FILE, Upstreams, write_upstreams

if TYPE_CHECKING:  # aiohttp is imported where the proxy needs it (HEAD), not by the deployer
    from aiohttp import ClientSession

__all__ = [
    "CONTROL_PATH",
    "STATS_PATH",
    "UPSTREAMS_FILE",
    "Front",
    "Upstreams",
    "write_upstreams",
]

CONTROL_PATH = "/-/mlcloud/front"
STATS_PATH = "/-/stats"
VERSION_HEADER = "x-mlcloud-version"
CONTROL_PATH_B, STATS_PATH_B, VERSION_HEADER_B = (
    CONTROL_PATH.encode(), STATS_PATH.encode(), VERSION_HEADER.encode()
)  # fmt: skip
# Hop-by-hop headers (RFC 9110 §7.6.1) and ones the proxy recomputes.
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)
_DROP_B = frozenset(h.encode() for h in _DROP)
#: not forwarded upstream either: the front sends the whole body at once (no 100-continue)
_DROP_UP = _DROP_B | {b"expect"}
_ATTEMPTS = 4
#: seconds a stopping front waits for the requests in flight (aiohttp's default)
SHUTDOWN_TIMEOUT = 60.0
log = logging.getLogger("mlcloud.front")


class FrontState(TypedDict):
    """What ``GET /-/mlcloud/front`` answers."""

    pid: int
    generation: int
    upstreams: list[str]
    versions: dict[str, int]  # version id -> weight (percent)
    inflight: dict[str, int]  # requests in flight per upstream (only those with some)
    down: list[str]  # upstreams being restarted
    connections: dict[str, int]  # open, cap, per phase, and counts since start


class Front:
    """What the front answers: the bearer-token check, the control and stats paths, and the
    proxy for the rest (the HTTP server around it: ``front_http.py``)."""

    def __init__(
        self,
        upstreams: Upstreams,
        conns: Connections,
        token: str | None,
        poke: Callable[[], None] | None = None,
    ) -> None:
        self.upstreams = upstreams
        self.conns = conns
        self.stats = Stats()
        # predictions the server's gateway sent straight to the servers (direct_route.py)
        self.gateway_counts = GatewayCounts(upstreams.path.parent / GATEWAY_STATS_DIR)
        self.expected = f"Bearer {token}".encode() if token else None
        self.poke = poke
        # MLCLOUD_FRONT_CLIENT=aiohttp: aiohttp's client for every request (A/B benchmarks)
        lean = front_client.available() and os.environ.get("MLCLOUD_FRONT_CLIENT") != "aiohttp"
        self.lean = front_client.UpstreamClient() if lean else None
        self._session: ClientSession | None = None  # aiohttp's, made on first use (HEAD)

    def check_head(self, req: Request) -> Response | None:
        """Every path needs ``Authorization: Bearer <token>`` (its first occurrence), compared
        in constant time; the server asks at the head, so a refused body is never buffered."""
        if self.expected is None:
            return None
        given = next((v for k, v in req.headers if k.lower() == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            return None
        message = "missing or invalid bearer token (Authorization: Bearer …)"
        return json_response(401, {"error": message}, b"WWW-Authenticate: Bearer\r\n")

    async def handle(self, req: Request) -> Response:
        """The answer to a request whose head passed :meth:`check_head`."""
        if req.method in (b"GET", b"HEAD"):
            path = req.target.partition(b"?")[0]
            if path == CONTROL_PATH_B:
                return json_response(200, self._control())
            if path == STATS_PATH_B:
                self.upstreams.reload()
                data = self.stats.snapshot(
                    self.upstreams.versions, self.upstreams.weights, self.gateway_counts.counters()
                )
                data["generation"] = self.upstreams.generation
                return json_response(200, data)
        return await self._proxy(req)

    def _control(self) -> FrontState:
        """The generation in force and the requests in flight (the deployer's view)."""
        upstreams = self.upstreams
        upstreams.reload()
        return {
            "pid": os.getpid(),
            "generation": upstreams.generation,
            "upstreams": upstreams.urls,
            "versions": dict(upstreams.weights),
            "inflight": {u: n for u, n in upstreams.inflight.items() if n},
            "down": sorted(upstreams.down),
            "connections": self.conns.snapshot(),
        }

    async def _proxy(self, req: Request) -> Response:
        """Route by weight between versions, round-robin within one (``front_upstreams.py``);
        a request that reached no upstream (nothing came back) is retried, up to
        ``_ATTEMPTS`` times. Every proxied response says which version answered."""
        upstreams, stats, clock = self.upstreams, self.stats, time.perf_counter
        block = b"".join(b"%s: %s\r\n" % (k, v) for k, v in req.headers
                         if k.lower() not in _DROP_UP)  # fmt: skip
        last_error = "no upstream is configured yet"
        for attempt in range(_ATTEMPTS):
            chosen = upstreams.route()
            if chosen is None:
                break
            url, version = chosen
            upstreams.inflight[url] = upstreams.inflight.get(url, 0) + 1
            started = clock()
            try:
                resp = await self._send(req, url, block)
                stats.of(url).record(resp.status, (clock() - started) * 1e3)
                resp.headers += b"%s: %s\r\n" % (VERSION_HEADER_B, version.encode())
                return resp
            except OSError as exc:  # TimeoutError and the clients' errors are OSErrors
                # Nothing came back: the backend is gone or going; try the current list again.
                stats.of(url).unreachable += 1
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("attempt %d to %s failed: %s", attempt + 1, url, last_error)
                if self.poke is not None:
                    self.poke()
                await asyncio.sleep(0.05 * (attempt + 1))
                upstreams.reload()
            finally:
                upstreams.inflight[url] -= 1
        if upstreams.urls and upstreams.down:
            message = "the endpoint's servers are restarting; retry shortly"
            return json_response(503, {"error": message}, b"Retry-After: 1\r\n")
        return json_response(502, {"error": f"no backend of this endpoint answered ({last_error})"})

    async def _send(self, req: Request, url: str, block: bytes) -> Response:
        """One attempt at one upstream: the lean client (``mlcloud/proxy_client.py``) unless
        there is none, or for HEAD (a response without the body its headers announce)."""
        if self.lean is not None and req.method != b"HEAD":
            status, raw, payload = await self.lean.forward(
                url, req.method, req.target, block, req.body
            )
            kept = b"".join(b"%s: %s\r\n" % (k, v) for k, v in raw if k.lower() not in _DROP_B)
            return Response(status, kept, payload)
        return await self._send_aiohttp(req, url)

    async def _send_aiohttp(self, req: Request, url: str) -> Response:
        from aiohttp import ClientError
        from yarl import URL

        session = self._session or self._open_session()
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers
                   if k.lower() not in _DROP_UP]  # fmt: skip
        target = URL(url + req.target.decode("latin-1"), encoded=True)  # as it came
        method = req.method.decode()
        try:
            async with session.request(method, target, headers=headers, data=req.body) as resp:
                payload = await resp.read()
        except ClientError as exc:
            raise front_client.UpstreamGone(f"{type(exc).__name__}: {exc}") from exc
        drop = _DROP_B - {b"content-length"} if method == "HEAD" else _DROP_B
        kept = b"".join(b"%s: %s\r\n" % (k, v) for k, v in resp.raw_headers
                        if k.lower() not in drop)  # fmt: skip
        return Response(resp.status, kept, payload, None if method == "HEAD" else -1)

    def _open_session(self) -> ClientSession:
        from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector

        # keepalive below uvicorn's 5 s idle timeout: never reuse a connection being closed.
        self._session = ClientSession(
            connector=TCPConnector(limit=0, keepalive_timeout=2.0),
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),  # a proxy keeps no cookies (and skips the jar's work)
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # the caller's
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.lean is not None:
            self.lean.close()


# ---- the process --------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = argparse.ArgumentParser(prog="python -m providers.local.front")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument(
        "--token-stdin", action="store_true", help="read the bearer token from stdin"
    )
    parser.add_argument("--max-body", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections)
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    parser.add_argument("--header-timeout", type=float, default=defaults.header_timeout)
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout)
    parser.add_argument("--log-file", type=Path, help="rotated log file (default: stderr)")
    parser.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024)
    return parser


def main(argv: list[str] | None = None) -> None:
    from providers.local import front_log
    from providers.local.endpoint_net import TokenError, check_token, needs_token

    args = _parser().parse_args(argv)
    front_log.setup(args.log_file, args.log_max_bytes)
    token = None
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            sys.exit("front: --token-stdin given but no token arrived on stdin")
    if needs_token(args.host):
        try:
            check_token(token, args.host)
        except TokenError as exc:
            sys.exit(f"front: {exc}")
    limits = Limits(args.max_connections, args.idle_timeout, args.header_timeout, args.body_timeout)
    _event_loop_policy()
    asyncio.run(_serve(args.host, args.port, args.state_dir, token, args.max_body, limits))


def _listen(host: str, port: int) -> socket.socket:
    """The bound listening socket, made here rather than by the loop from ``host``: uvloop
    resolves a host name on libuv's thread pool, and a front with threads dies more slowly to
    SIGKILL (milliseconds during which its port still accepts, then resets, connections)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def _event_loop_policy() -> None:
    """uvloop when installed (BentoML's uvicorn brings it): the proxy's per-request cost is
    mostly the event loop's, and uvloop's is a fraction of asyncio's.
    ``MLCLOUD_FRONT_LOOP=asyncio``: the standard loop (A/B benchmarks)."""
    if os.environ.get("MLCLOUD_FRONT_LOOP") == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(
    host: str, port: int, state_dir: Path, token: str | None, max_body: int, limits: Limits
) -> None:
    """Serve until SIGTERM/SIGINT, then let the requests in flight finish (up to
    ``SHUTDOWN_TIMEOUT`` s) before closing every connection."""
    from providers.local.front_conn import SWEEP, raise_fd_limit
    from providers.local.front_watch import Watchdog

    raise_fd_limit()
    conns = Connections(limits)
    watchdog = Watchdog(state_dir, Upstreams(state_dir / UPSTREAMS_FILE))
    front = Front(watchdog.upstreams, conns, token, watchdog.poke)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: FrontConn(front.handle, conns, max_body, front.check_head),
        sock=_listen(host, port),
        backlog=BACKLOG,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watching = asyncio.create_task(watchdog.run())
    sweeping = asyncio.create_task(_sweep(conns, SWEEP))
    log.info(
        "listening on %s:%d (auth %s; at most %d connections; idle %gs, header %gs, body %gs)",
        host, port, "on" if token else "off", conns.cap,
        limits.idle_timeout, limits.header_timeout, limits.body_timeout,
    )  # fmt: skip
    try:
        await stop.wait()
    finally:
        watching.cancel()
        listener.close()
        await _drain(conns)
        sweeping.cancel()
        await front.close()


async def _sweep(conns: Connections, every: float) -> None:
    """The connections' deadlines, enforced by one timer for all of them."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        conns.expire(loop.time())


async def _drain(conns: Connections) -> None:
    """Close idle connections now, the others once their answer is out (as aiohttp did)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHUTDOWN_TIMEOUT
    while conns.open and loop.time() < deadline:
        for conn in [c for c in conns.open if c.phase != BUSY]:
            conn.close()
        await asyncio.sleep(0.05)
    for conn in list(conns.open):
        conn.close()


if __name__ == "__main__":
    main()
