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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from mlcloud import proxy_client as front_client
from providers.local.front_conn import BACKLOG, Connections, Limits
from providers.local.front_stats import Stats
from providers.local.front_upstreams import UPSTREAMS_FILE, Upstreams, write_upstreams

if TYPE_CHECKING:  # aiohttp is imported where the proxy runs, not by the deployer
    from aiohttp import ClientSession, web
    from aiohttp.typedefs import Handler, Middleware
    from multidict import CIMultiDict

    from providers.local.front_watch import Watchdog

__all__ = [
    "CONTROL_PATH",
    "STATS_PATH",
    "UPSTREAMS_FILE",
    "Upstreams",
    "make_app",
    "write_upstreams",
]

CONTROL_PATH = "/-/mlcloud/front"
STATS_PATH = "/-/stats"
VERSION_HEADER = "x-mlcloud-version"
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
#: not forwarded upstream either: the front sends the whole body at once (no 100-continue)
_DROP_UP = _DROP | {"expect"}
_ATTEMPTS = 4
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


def make_app(
    state_dir: Path,
    token: str | None,
    max_body: int,
    conns: Connections | None = None,
    watchdog: Watchdog | None = None,
) -> web.Application:
    """The front: bearer-token check, the control and stats paths, and the proxy for the rest."""
    from aiohttp import web

    conns = conns or Connections(Limits())
    upstreams = watchdog.upstreams if watchdog else Upstreams(state_dir / UPSTREAMS_FILE)
    stats = Stats()
    app = web.Application(client_max_size=max_body)
    _pooled_client(app)
    app.middlewares.append(_phases(conns))
    if token:
        app.middlewares.append(_bearer_auth(token))
    app.router.add_get(CONTROL_PATH, _control(upstreams, conns))
    app.router.add_get(STATS_PATH, _stats(upstreams, stats))
    proxy = _proxy(upstreams, conns, stats, max_body, watchdog.poke if watchdog else None)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": message}, status=status, headers=headers)


def _pooled_client(app: web.Application) -> None:
    """One pooled client session for the app's life, to reach the upstreams."""
    from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector

    async def on_startup(app: web.Application) -> None:
        # keepalive below uvicorn's 5 s idle timeout: never reuse a connection being closed.
        connector = TCPConnector(limit=0, keepalive_timeout=2.0)
        app["client"] = ClientSession(
            connector=connector,
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
            cookie_jar=DummyCookieJar(),  # a proxy keeps no cookies (and skips the jar's work)
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # the caller's
        )

        # MLCLOUD_FRONT_CLIENT=aiohttp: aiohttp's client for every request (A/B benchmarks)
        lean = front_client.available() and os.environ.get("MLCLOUD_FRONT_CLIENT") != "aiohttp"
        app["upstream"] = front_client.UpstreamClient() if lean else None

    async def on_cleanup(app: web.Application) -> None:
        await app["client"].close()
        if app["upstream"] is not None:
            app["upstream"].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)


def _phases(conns: Connections) -> Middleware:
    """Tell the connection guard where each request is: its head is in on entry, and it is
    idle again only once the response is written (so eviction never cuts a response)."""
    from aiohttp import web

    @web.middleware
    async def phases(request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = conns.of(request.protocol)
        if conn is not None:
            conn.head_done()
        try:
            response = await handler(request)
            await response.prepare(request)
            await response.write_eof()
            return response
        finally:
            if conn is not None:
                conn.response_done()

    return phases


def _bearer_auth(token: str) -> Middleware:
    """Every path needs ``Authorization: Bearer <token>``, compared in constant time."""
    from aiohttp import web

    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            resp = _error(401, "missing or invalid bearer token (Authorization: Bearer …)")
            resp.headers["WWW-Authenticate"] = "Bearer"
            return resp
        return await handler(request)

    return auth


def _control(
    upstreams: Upstreams, conns: Connections
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The generation in force and the requests in flight (the deployer's view of the front)."""
    from aiohttp import web

    async def control(request: web.Request) -> web.Response:
        upstreams.reload()
        state: FrontState = {
            "pid": os.getpid(),
            "generation": upstreams.generation,
            "upstreams": upstreams.urls,
            "versions": dict(upstreams.weights),
            "inflight": {u: n for u, n in upstreams.inflight.items() if n},
            "down": sorted(upstreams.down),
            "connections": conns.snapshot(),
        }
        return web.json_response(state)

    return control


def _stats(upstreams: Upstreams, stats: Stats) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Per-version counters (``front_stats.py``): what a rollout judges a canary by."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        upstreams.reload()
        data = stats.snapshot(upstreams.versions, upstreams.weights)
        data["generation"] = upstreams.generation
        return web.json_response(data)

    return answer


def _proxy(
    upstreams: Upstreams,
    conns: Connections,
    stats: Stats,
    max_body: int,
    poke: Callable[[], None] | None,
) -> Handler:
    """Route by weight between versions, round-robin within one (``front_upstreams.py``); a
    request that reached no upstream (nothing came back) is retried, up to ``_ATTEMPTS`` times.
    Every proxied response says which version answered (``x-mlcloud-version``)."""
    from aiohttp import ClientError, web

    body_timeout = conns.limits.body_timeout
    clock = time.perf_counter

    async def proxy(request: web.Request) -> web.StreamResponse:
        body = await _read_body(request, max_body, body_timeout)
        if isinstance(body, web.Response):
            return body
        conn = conns.of(request.protocol)
        if conn is not None:
            conn.body_done()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_UP}
        session: ClientSession = request.app["client"]
        lean: front_client.UpstreamClient | None = request.app["upstream"]
        target = request.rel_url.raw_path_qs
        last_error = "no upstream is configured yet"
        for attempt in range(_ATTEMPTS):
            chosen = upstreams.route()
            if chosen is None:
                break
            url, version = chosen
            upstreams.inflight[url] = upstreams.inflight.get(url, 0) + 1
            started = clock()
            try:
                status, out_headers, payload = await _send(
                    lean, session, request.method, url, target, headers, body
                )
                stats.of(url).record(status, (clock() - started) * 1e3)
                out_headers[VERSION_HEADER] = version
                return web.Response(status=status, body=payload, headers=out_headers)
            except (TimeoutError, ClientError, OSError) as exc:
                # Nothing came back: the backend is gone or going; try the current list again.
                stats.of(url).unreachable += 1
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("attempt %d to %s failed: %s", attempt + 1, url, last_error)
                if poke is not None:
                    poke()
                await asyncio.sleep(0.05 * (attempt + 1))
                upstreams.reload()
            finally:
                upstreams.inflight[url] -= 1
        if upstreams.urls and upstreams.down:
            message = "the endpoint's servers are restarting; retry shortly"
            return _error(503, message, {"Retry-After": "1"})
        return _error(502, f"no backend of this endpoint answered ({last_error})")

    return proxy


async def _read_body(request: web.Request, max_body: int, timeout: float) -> bytes | web.Response:
    """The whole request body, or the error response to answer instead (413, 408)."""
    from aiohttp import web

    try:
        if request.content.is_eof():  # the usual small body came with the head: no timer
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"request body is larger than the limit of {max_body} bytes")
    except TimeoutError:
        message = f"the request body was not complete within {timeout:.0f}s"
        return _error(408, message, {"Connection": "close"})


async def _send(
    lean: front_client.UpstreamClient | None,
    session: ClientSession,
    method: str,
    url: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
) -> tuple[int, CIMultiDict[str], bytes]:
    """One attempt at one upstream: (status, the headers to answer with, body). The lean
    client (``mlcloud/proxy_client.py``) unless there is none, or for HEAD (a response without the
    body its headers announce)."""
    from multidict import CIMultiDict

    if lean is not None and method != "HEAD":
        status, raw, payload = await lean.request(url, method, target, headers.items(), body)
        return status, CIMultiDict(front_client.header_pairs(raw, _DROP)), payload
    async with session.request(method, url + target, headers=headers, data=body) as resp:
        payload = await resp.read()
        kept = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _DROP)
        return resp.status, kept, payload


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
    """Serve until SIGTERM/SIGINT: aiohttp's handler per connection, inside the guard."""
    from aiohttp import web

    from providers.local.front_conn import Guarded, raise_fd_limit
    from providers.local.front_watch import Watchdog

    raise_fd_limit()
    conns = Connections(limits)
    watchdog = Watchdog(state_dir, Upstreams(state_dir / UPSTREAMS_FILE))
    app = make_app(state_dir, token, max_body, conns, watchdog)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout)
    await runner.setup()
    loop = asyncio.get_running_loop()
    server = runner.server
    assert server is not None
    listener = await loop.create_server(
        lambda: Guarded(server(), conns), sock=_listen(host, port), backlog=BACKLOG
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watching = asyncio.create_task(watchdog.run())
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
        await runner.cleanup()


if __name__ == "__main__":
    main()
