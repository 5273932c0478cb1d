"""The predict gateway: ``POST /v1/endpoints/{name}:predict`` on whatever provider serves it.

One URL scheme for every provider. The endpoint is looked up through :mod:`mlcloud.api` (an
unknown name is a 404 problem) and resolved into an upstream (``upstreams.target_of``), cached
for ``target_ttl_s``. A local endpoint's small predictions go straight to its model servers,
routed and counted as its front would (the provider's ``direct_route``: the front is a second
proxy on the way, which alone cost more than the gateway's budget; through the front when no
server takes one, or with ``MLCLOUD_GATEWAY_DIRECT=0``); other HTTP upstreams (the front for
large bodies, Ray Serve) get the caller's bytes as they came, on pooled keep-alive connections,
streamed both ways when large; cloud endpoints are called through the provider's SDK client in
a worker thread (``cloud_upstreams``), so their credentials stay on the server. A small body's
request is answered by the fast path (:mod:`mlcloud.server.fastpath`, taken by the server's HTTP
protocol) before FastAPI routes it; both share ``serve``.

Whose fault a failure is stays visible: a model refusing the caller's request answers its own
4xx, passed on; the gateway answers 413 for a body over the limit, 502 when the upstream is
unreachable, refused the gateway or failed (5xx), 503 when it is not serving (yet) or overloaded,
504 when it is too slow. Every answer carries ``x-mlcloud-version`` (the version that served
it) and is counted in the per-version series of :mod:`mlcloud.server.metrics` (``/metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from mlcloud import proxy_client
from mlcloud.errors import ConfigError, MlcloudError
from mlcloud.rollouts import stats as rollout_stats
from mlcloud.server import metrics as gateway_metrics
from mlcloud.server import metrics_shared
from mlcloud.server.answers import (
    failure_response,
    problem_response,
    respond,
    since,
    too_large,
)
from mlcloud.server.auth import Identity, require
from mlcloud.server.problems import problem, status_for
from mlcloud.server.upstreams import (
    HTTP_TYPES,
    Answer,
    Target,
    UpstreamFailure,
    forward_direct,
    forward_http,
    forward_lean,
    target_of,
)

log = logging.getLogger("mlcloud.server.gateway")
STREAM_MIN = 64 * 1024  # request bodies larger than this (or unsized) are streamed upstream
_ENV = "MLCLOUD_GATEWAY_"


@dataclass(frozen=True)
class GatewayConfig:
    """Limits of the gateway; ``MLCLOUD_GATEWAY_MAX_BODY`` / ``_TIMEOUT_S`` / ``_TARGET_TTL_S``
    override the defaults (every uvicorn worker reads its environment); ``_DIRECT=0`` sends
    local endpoints' predictions through their fronts (an A/B, or a front's view of all)."""

    max_body: int = 10 * 1024 * 1024
    timeout_s: float = 60.0
    target_ttl_s: float = 5.0
    max_connections: int = 512
    cloud_threads: int = 64
    direct: bool = True

    @classmethod
    def from_env(cls) -> GatewayConfig:
        def read(name: str, default: float) -> float:
            raw = os.environ.get(_ENV + name)
            try:
                return float(raw) if raw else default
            except ValueError:
                raise ConfigError(f"{_ENV}{name}={raw!r} is not a number") from None

        base = cls()
        return cls(
            max_body=int(read("MAX_BODY", base.max_body)),
            timeout_s=read("TIMEOUT_S", base.timeout_s),
            target_ttl_s=read("TARGET_TTL_S", base.target_ttl_s),
            direct=os.environ.get(_ENV + "DIRECT", "1").strip().lower() not in ("0", "false", "no"),
        )


class BodyTooLarge(Exception):
    pass


class Gateway:
    """The app's pooled HTTP session, resolved targets and metrics."""

    def __init__(self, config: GatewayConfig, metrics: gateway_metrics.Metrics) -> None:
        import aiohttp

        self.config, self.metrics = config, metrics
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=config.max_connections,
                keepalive_timeout=4.0,  # below the upstream servers' idle timeouts (5 s)
            ),
            trust_env=False,  # loopback and the clusters' own addresses: no proxies
            auto_decompress=False,  # the bytes as the upstream sent them
            skip_auto_headers=("User-Agent",),
        )
        # local fronts' buffered predictions go through the front's own lean client
        self.lean = proxy_client.UpstreamClient() if proxy_client.available() else None
        # its connections in use, bounded as aiohttp's connector bounds the others
        self.lean_slots = asyncio.Semaphore(config.max_connections)
        self._targets: dict[tuple[str, str | None], Target] = {}
        # blocking SDK calls get threads of their own: a slow cloud never starves the store
        self.cloud_threads = anyio.CapacityLimiter(config.cloud_threads)
        self._lookups: dict[tuple[str, str | None], asyncio.Future[Target]] = {}
        self._refreshing: set[tuple[str, str | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def target(self, name: str, provider: str | None) -> Target:
        """The endpoint's upstream. A stale one (older than ``target_ttl_s``) still serves
        while it is refreshed in the background, so no request waits for the store."""
        key = (name, provider)
        found = self._targets.get(key)
        if found is not None:
            if self._stale(found) and key not in self._refreshing:
                self._refreshing.add(key)
                task = asyncio.create_task(self._refresh(key, found))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return found
        lookup = self._lookups.get(key)  # one first lookup per name, however many ask
        if lookup is None:
            lookup = self._lookups[key] = asyncio.ensure_future(self._first(key))
        return await asyncio.shield(lookup)  # a caller that goes away cancels only itself

    async def _first(self, key: tuple[str, str | None]) -> Target:
        try:
            found = self._targets[key] = await run_in_threadpool(_resolve, *key, None)
            return found
        finally:
            del self._lookups[key]

    async def _refresh(self, key: tuple[str, str | None], old: Target) -> None:
        # a local endpoint whose servers are reached directly is also healed (its front
        # restarted if it died): no prediction of the gateway's finds it down any more
        heal = old.direct is not None
        try:
            self._targets[key] = await run_in_threadpool(_resolve, key[0], key[1], old, heal)
        except Exception as exc:  # gone or not serving: the next request looks it up again
            log.info("endpoint %s: %s", key[0], exc)
            self._targets.pop(key, None)
        finally:
            self._refreshing.discard(key)

    async def healed(self, target: Target, provider: str | None) -> Target:
        """The endpoint refreshed by its provider (a local one restarts a dead front)."""
        healed = await run_in_threadpool(_resolve, target.name, provider, target, True)
        self._targets[(target.name, provider)] = healed
        return healed

    def _stale(self, target: Target) -> bool:
        return _now() - target.resolved_at > self.config.target_ttl_s

    async def aclose(self) -> None:
        if self.lean is not None:
            self.lean.close()
        for target in self._targets.values():
            if target.direct is not None:
                target.direct.flush()  # the last counts, where the endpoint's own are read
        await self.session.close()


def _now() -> float:
    return time.monotonic()


def _resolve(
    name: str, provider: str | None, previous: Target | None, heal: bool = False
) -> Target:
    """Look the endpoint up through the SDK facade (blocking). ``heal``: refresh it first (a
    local endpoint's status restarts a dead front). The ``previous`` target's provider object
    (its SDK clients, made once) and per-target facts are kept while the record is unchanged."""
    from mlcloud import api

    endpoint = api.endpoint(name, provider)
    try:
        record = endpoint.status() if heal else endpoint.record
    finally:
        endpoint.provider.store.close()  # reopened by whichever thread uses it next
    same = previous is not None and previous.record.provider == record.provider
    target = target_of(record, previous.provider if previous and same else endpoint.provider)
    if previous is not None and same and previous.record.updated_at == record.updated_at:
        target.cache = previous.cache
    return target


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    config = getattr(app.state, "gateway_config", None) or GatewayConfig.from_env()
    gateway = Gateway(config, gateway_metrics.Metrics())
    shared = metrics_shared.directory_from_env()
    if shared is not None:  # several workers: each one's numbers are the whole server's
        gateway.metrics.share(shared)
    gateway_metrics.install(gateway.metrics)  # what version_stats reads in this process
    app.state.gateway = gateway
    # rollouts running in this process judge canaries on what the gateway saw
    rollout_stats.use_server_metrics(gateway_metrics.version_stats)
    # rollouts whose controller died with the previous server carry on here, as threads
    await run_in_threadpool(_resume_rollouts)
    try:
        yield
    finally:
        rollout_stats.use_server_metrics(None)
        gateway.metrics.stop_sharing()
        await gateway.aclose()


def _resume_rollouts() -> None:
    from mlcloud import rollouts

    try:
        resumed = rollouts.resume_all()
    except MlcloudError as exc:  # the server still serves; `rollouts show` heals them later
        log.warning("rollouts not resumed: %s", exc)
        return
    if resumed:
        log.info("rollouts resumed", extra={"rollouts": [f"r-{r.id}" for r in resumed]})


router = APIRouter(lifespan=_lifespan, tags=["predict"])
_PREDICTOR = Depends(require("read", limit="predict"))  # a read token, within its rate limit
_READER = Depends(require("read"))


_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"instances": {"type": "array"}, "parameters": {"type": "object"}},
                "required": ["instances"],
            },
            "example": {"instances": [[5.1, 3.5, 1.4, 0.2]]},
        }
    },
}


@router.post(
    "/v1/endpoints/{name}:predict",
    response_model=None,
    openapi_extra={"requestBody": _PREDICT_BODY},  # read raw (forwarded as is), so declared here
    responses={
        413: {"description": "the body is over the gateway's limit"},
        502: {"description": "the upstream is unreachable, refused the gateway or failed"},
        503: {"description": "the endpoint is not serving (yet) or is overloaded"},
        504: {"description": "the upstream did not answer in time"},
    },
)
async def predict(
    name: str,
    request: Request,
    provider: str | None = None,
    _who: Identity = _PREDICTOR,
) -> Response:
    """Forward the request body to endpoint ``name``'s model; the answer is the model's."""
    gateway: Gateway = request.app.state.gateway
    started = time.perf_counter()
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > gateway.config.max_body:
        return too_large(gateway.config.max_body)

    def forward(target: Target) -> Awaitable[Answer]:
        return _forward(gateway, target, request, length, provider)

    return await serve(gateway, name, provider, request.url.path, started, forward)


async def serve(
    gateway: Gateway,
    name: str,
    provider: str | None,
    path: str,
    started: float,
    forward: Callable[[Target], Awaitable[Answer]],
) -> Response:
    """Resolve ``name``, ``forward`` the request to it and render the answer or the failure,
    counted (the route and the fast path, :mod:`mlcloud.server.fastpath`, share it)."""
    try:
        target = await gateway.target(name, provider)
    except MlcloudError as err:
        return problem_response(problem(err, instance=path), status_for(err))
    except UpstreamFailure as failure:
        return failure_response(failure, None)
    try:
        answer = await forward(target)
    except BodyTooLarge:
        return too_large(gateway.config.max_body)
    except MlcloudError as err:  # looked up again to heal it, and gone or refused
        return problem_response(problem(err, instance=path), status_for(err))
    except UpstreamFailure as failure:
        version = failure.version or target.fallback_version
        error = failure.kind if failure.status >= 500 else None
        gateway.metrics.observe(name, version, failure.status, since(started), error)
        return failure_response(failure, version)
    return await respond(gateway.metrics, target, answer, started)


async def _forward(
    gateway: Gateway, target: Target, request: Request, length: str | None, provider: str | None
) -> Answer:
    config = gateway.config
    content_type = request.headers.get("content-type") or "application/json"
    accept = request.headers.get("accept")
    small = length is not None and length.isdigit() and int(length) <= STREAM_MIN
    if small or target.type not in HTTP_TYPES:
        data = await _read(request, config.max_body)
        return await forward_bytes(gateway, target, data, content_type, accept, provider)
    headers = {"content-type": content_type}
    if accept is not None:
        headers["accept"] = accept
    if length is not None:
        headers["content-length"] = length
    counted = _Limited(request, config.max_body)
    try:
        return await forward_http(gateway.session, target, counted(), headers, config.timeout_s)
    except UpstreamFailure:
        if counted.over:  # the HTTP client reports the body's own failure as a broken upload
            raise BodyTooLarge from None
        raise


async def forward_bytes(
    gateway: Gateway,
    target: Target,
    data: bytes,
    content_type: str,
    accept: str | None,
    provider: str | None,
) -> Answer:
    """A whole body to ``target``: a cloud SDK call in a worker thread, else an HTTP POST (a
    local front that does not answer is healed by its provider, then tried once more)."""
    config = gateway.config
    if target.type not in HTTP_TYPES:
        call = anyio.to_thread.run_sync(
            _invoke_cloud, target, data, content_type, config.timeout_s,
            limiter=gateway.cloud_threads,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(call, config.timeout_s + 1.0)
        except TimeoutError:
            raise UpstreamFailure(
                504, "UpstreamTimeout", f"endpoint {target.name!r} ({target.type}) did not "
                f"answer within {config.timeout_s:g}s",
            ) from None  # fmt: skip
    headers = {"content-type": content_type}
    if accept is not None:
        headers["accept"] = accept
    try:
        return await _post(gateway, target, data, headers)
    except UpstreamFailure as failure:
        if target.type != "local" or failure.kind != "UpstreamUnreachable":
            raise
    # the front did not answer: its status restarts a dead one; then once more
    healed = await gateway.healed(target, provider)
    return await _post(gateway, healed, data, headers)


def _post(
    gateway: Gateway, target: Target, data: bytes, headers: dict[str, str]
) -> Awaitable[Answer]:
    timeout = gateway.config.timeout_s
    if target.base is not None and gateway.lean is not None:  # a local front
        return _lean(gateway, gateway.lean, target, data, headers)
    return forward_http(gateway.session, target, data, headers, timeout)


async def _lean(
    gateway: Gateway,
    client: proxy_client.UpstreamClient,
    target: Target,
    data: bytes,
    headers: dict[str, str],
) -> Answer:
    """To a local endpoint's servers directly when it has a route to them, else (or when
    none of them took the request) through its front."""
    timeout = gateway.config.timeout_s
    async with gateway.lean_slots:
        if target.direct is not None and gateway.config.direct:
            answer = await forward_direct(client, target, data, headers, timeout)
            if answer is not None:
                return answer
        return await forward_lean(client, target, data, headers, timeout)


def _invoke_cloud(target: Target, body: bytes, content_type: str, timeout: float) -> Answer:
    from mlcloud.server import cloud_upstreams

    return cloud_upstreams.invoke(target, body, content_type, timeout)


async def _read(request: Request, limit: int) -> bytes:
    chunks = [chunk async for chunk in _Limited(request, limit)()]
    return b"".join(chunks)


class _Limited:
    """The request body as it arrives, refused (``BodyTooLarge``) past ``limit`` bytes."""

    def __init__(self, request: Request, limit: int) -> None:
        self.request, self.limit, self.over = request, limit, False

    async def __call__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.stream():
            seen += len(chunk)
            if seen > self.limit:
                self.over = True
                raise BodyTooLarge
            if chunk:
                yield chunk


@router.get("/metrics", response_model=None, include_in_schema=False)
async def prometheus_metrics(request: Request, _who: Identity = _READER) -> Response:
    """The per-endpoint, per-version series in Prometheus' text format."""
    from prometheus_client import CONTENT_TYPE_LATEST

    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
