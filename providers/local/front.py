"""The stable front of a local endpoint: a tiny HTTP reverse proxy, one process per endpoint.

Why a front at all: a model update must not change the address callers use, and must not fail
a single request. The front owns the endpoint's port for the endpoint's whole life; the BentoML
servers behind it come and go on private 127.0.0.1 ports.

Design (the simplest one that is sound):

* The upstream list lives in ``<state dir>/upstreams.json`` (``{"generation": n, "upstreams":
  [url, ...], "servers": [{url, pid, create_time, log}, ...]}``). The deployer replaces it
  atomically (write + ``os.replace``); the front re-reads it whenever its ``stat`` changes,
  checked on every request (a few microseconds). No control port exists, so there is nothing
  extra to secure.
* ``GET /-/mlcloud/front`` reloads the file and answers the generation in force, the number
  of requests in flight per upstream and the connection counts. The deployer uses it to confirm
  a switch and then to wait until the old servers have drained before stopping them.
* Requests go round-robin over the current upstreams that are up. A request that could not
  reach its upstream (connection refused/reset before a response) is retried on the current
  list: model predictions are pure, so a retry is safe, and it covers a backend that died or was
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
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from providers.local.front_conn import BACKLOG, Connections, Limits

if TYPE_CHECKING:  # aiohttp is imported where the proxy runs, not by the deployer
    from aiohttp import web
    from aiohttp.typedefs import Handler, Middleware

    from providers.local.front_watch import Watchdog

UPSTREAMS_FILE = "upstreams.json"
CONTROL_PATH = "/-/mlcloud/front"
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
_ATTEMPTS = 4
log = logging.getLogger("mlcloud.front")


def write_upstreams(
    state_dir: Path,
    generation: int,
    upstreams: list[str],
    servers: list[dict[str, Any]] | None = None,
) -> None:
    """Atomically publish a new upstream list (used by the deployer). ``servers``: the processes
    behind the URLs (``url``, ``pid``, ``create_time``, ``log``), which the front's watchdog
    restarts if they die."""
    target = state_dir / UPSTREAMS_FILE
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    data = {"generation": generation, "upstreams": upstreams, "servers": servers or []}
    tmp.write_text(json.dumps(data))
    os.replace(tmp, target)


class Upstreams:
    """The current upstream list, reloaded from the state file when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = -1
        self.urls: list[str] = []
        self.servers: list[dict[str, Any]] = []
        self.down: set[str] = set()  # being restarted by the watchdog: sent nothing
        self.inflight: dict[str, int] = {}
        self.on_switch: Callable[[], None] | None = None  # the watchdog adopts the new servers
        self._stamp: tuple[int, int] | None = None
        self._rr = itertools.count()

    def reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # a torn read cannot happen with os.replace; keep the old list regardless
        self._stamp = stamp
        urls = [str(u) for u in data.get("upstreams", [])]
        if urls and int(data.get("generation", 0)) != self.generation:
            log.info("switching to generation %s: %s", data.get("generation"), urls)
            self.generation = int(data["generation"])
            self.urls = urls
            self.servers = [s for s in data.get("servers") or [] if isinstance(s, dict)]
            self.down = set()
            if self.on_switch is not None:
                self.on_switch()

    def pick(self) -> str | None:
        """The next upstream that is up; ``None`` if there is none."""
        self.reload()
        urls = [u for u in self.urls if u not in self.down] if self.down else self.urls
        if not urls:
            return None
        return urls[next(self._rr) % len(urls)]


class FrontState(TypedDict):
    """What ``GET /-/mlcloud/front`` answers."""

    pid: int
    generation: int
    upstreams: list[str]
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
    """The front: bearer-token check, the control path, and the proxy for everything else."""
    from aiohttp import web

    conns = conns or Connections(Limits())
    upstreams = watchdog.upstreams if watchdog else Upstreams(state_dir / UPSTREAMS_FILE)
    app = web.Application(client_max_size=max_body)
    _pooled_client(app)
    app.middlewares.append(_phases(conns))
    if token:
        app.middlewares.append(_bearer_auth(token))
    app.router.add_get(CONTROL_PATH, _control(upstreams, conns))
    proxy = _proxy(upstreams, conns, max_body, watchdog.poke if watchdog else None)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.json_response({"error": message}, status=status, headers=headers)


def _pooled_client(app: web.Application) -> None:
    """One pooled client session for the app's life, to reach the upstreams."""
    from aiohttp import ClientSession, ClientTimeout, TCPConnector

    async def on_startup(app: web.Application) -> None:
        # keepalive below uvicorn's 5 s idle timeout: never reuse a connection being closed.
        connector = TCPConnector(limit=0, keepalive_timeout=2.0)
        app["client"] = ClientSession(
            connector=connector,
            timeout=ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )

    async def on_cleanup(app: web.Application) -> None:
        await app["client"].close()

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
            "inflight": {u: n for u, n in upstreams.inflight.items() if n},
            "down": sorted(upstreams.down),
            "connections": conns.snapshot(),
        }
        return web.json_response(state)

    return control


def _proxy(
    upstreams: Upstreams,
    conns: Connections,
    max_body: int,
    poke: Callable[[], None] | None,
) -> Handler:
    """Round-robin over the current upstreams; a request that reached no upstream (nothing came
    back) is retried on the current list, up to ``_ATTEMPTS`` times."""
    from aiohttp import ClientError, ClientSession, web

    body_timeout = conns.limits.body_timeout

    async def proxy(request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body is larger than the limit of {max_body} bytes")
        except TimeoutError:
            message = f"the request body was not complete within {body_timeout:.0f}s"
            return _error(408, message, {"Connection": "close"})
        conn = conns.of(request.protocol)
        if conn is not None:
            conn.body_done()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        session: ClientSession = request.app["client"]
        last_error = "no upstream is configured yet"
        for attempt in range(_ATTEMPTS):
            url = upstreams.pick()
            if url is None:
                break
            upstreams.inflight[url] = upstreams.inflight.get(url, 0) + 1
            try:
                async with session.request(
                    request.method, url + request.rel_url.raw_path_qs, headers=headers, data=body
                ) as resp:
                    payload = await resp.read()
                    out = web.Response(status=resp.status, body=payload)
                    for k, v in resp.headers.items():
                        if k.lower() not in _DROP:
                            out.headers.add(k, v)
                    return out
            except (TimeoutError, ClientError, OSError) as exc:
                # Nothing came back: the backend is gone or going; try the current list again.
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("attempt %d to %s failed: %s", attempt + 1, url, last_error)
                if poke is not None:
                    poke()
                await asyncio.sleep(0.05 * (attempt + 1))
            finally:
                upstreams.inflight[url] -= 1
        if upstreams.urls and upstreams.down:
            message = "the endpoint's servers are restarting; retry shortly"
            return _error(503, message, {"Retry-After": "1"})
        return _error(502, f"no backend of this endpoint answered ({last_error})")

    return proxy


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
    asyncio.run(_serve(args.host, args.port, args.state_dir, token, args.max_body, limits))


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
        lambda: Guarded(server(), conns), host, port, backlog=BACKLOG, reuse_address=True
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
