"""Where an endpoint's predictions are served, and the HTTP forwarding of the gateway.

An endpoint record is resolved once into a :class:`Target` (cached by the gateway for a few
seconds): an HTTP upstream (the local front, a Ray Serve proxy) with the auth headers it takes
(a local endpoint also with its ``direct`` route to its model servers), or a cloud runtime
reached through the provider object (``cloud_upstreams``), whose SDK holds the credentials.
The core never imports ``providers``: a provider's clients are reached by the attribute names
its ``endpoints.py`` uses (``clients.runtime``, ``clients.prediction``,
``clients.ml``).

Every answer is an :class:`Answer`; every failure to get one is an :class:`UpstreamFailure`
whose status says whose fault it is (502 unreachable or broken upstream, 503 not serving or
overloaded, 504 too slow), kept apart from a model's own 4xx answer to a bad request.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.records import EndpointRecord, EndpointState

if TYPE_CHECKING:
    import aiohttp

    from mlcloud.provider import DirectRoute, Provider
    from mlcloud.proxy_client import UpstreamClient

VERSION_HEADER = "x-mlcloud-version"
HTTP_TYPES = frozenset({"local", "ray"})
CLOUD_TYPES = frozenset({"sagemaker", "vertex", "azureml"})
BUFFER_MAX = 1 << 20  # answers up to this size (with a Content-Length) are read whole
_TOKEN_ENV, _TOKEN_FILE = "MLCLOUD_API_TOKEN", "api-token"  # the local front's bearer token
#: response headers never passed on (hop-by-hop, or rewritten by the gateway's own server)
_DROP_OUT = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "server",
        "date",
        VERSION_HEADER,
    }
)
_DROP_OUT_RAW = frozenset(name.encode() for name in _DROP_OUT)
_VERSION_RAW = VERSION_HEADER.encode()


class UpstreamFailure(Exception):
    """No usable answer came back. ``status``: 502 (unreachable, refused the gateway's
    credentials, answered 5xx), 503 (not serving yet / overloaded: retry), 504 (too slow).
    ``kind`` names the failure in problem JSON and the error series."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        version: str | None = None,
        upstream_status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail
        self.version, self.upstream_status, self.retry_after = (
            version,
            upstream_status,
            retry_after,
        )


@dataclass
class Answer:
    """What the upstream answered: ``body`` whole, or a stream closed by ``close``."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes | AsyncIterator[bytes]
    version: str
    close: Callable[[], Awaitable[None]] | None = None
    raw: list[tuple[bytes, bytes]] | None = None  # the lean client's headers, used as they are


@dataclass
class Target:
    """One endpoint, resolved: how to reach it and whom to attribute an answer to by default."""

    name: str
    type: str
    record: EndpointRecord
    provider: Provider[Any]
    url: str | None = None  # HTTP upstreams: the predict URL
    base: str | None = None  # a local front: its ``http://host:port`` (the lean client's key)
    headers: dict[str, str] = field(default_factory=dict)  # HTTP upstreams: auth
    direct: DirectRoute | None = None  # a local endpoint's servers, reached without its front
    resolved_at: float = field(default_factory=time.monotonic)
    cache: dict[str, Any] = field(default_factory=dict)  # per-target SDK facts (Azure's key)

    @property
    def fallback_version(self) -> str:
        return record_version(self.record)


def record_version(record: EndpointRecord) -> str:
    """The version a record says serves everything: the one version taking traffic, else the
    newest deployed, else the served model's digest. With several versions taking traffic and
    no attribution from the upstream: ``"unattributed"`` (never a guess)."""
    traffic = record.details.get("traffic") or {}
    live = [str(v) for v, weight in traffic.items() if weight]
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        return "unattributed"
    newest = record.details.get("newest")
    if newest:
        return str(newest)
    return f"sha256:{record.model_sha256[:12]}" if record.model_sha256 else "default"


def target_of(record: EndpointRecord, provider: Provider[Any]) -> Target:
    """Resolve ``record`` (blocking: may read a token file). ``UpstreamFailure`` (503) when it
    is not serving yet; an unknown provider type is a 502 (the gateway cannot reach it)."""
    if record.state in (EndpointState.CREATING, EndpointState.DELETED):
        raise UpstreamFailure(
            503, "NotServing", f"endpoint {record.name!r} is {record.state}, not serving yet",
            retry_after=5,
        )  # fmt: skip
    target = Target(record.name, record.type, record, provider)
    if record.type == "local":
        front = record.details.get("front")
        if not front:
            raise UpstreamFailure(503, "NotServing", f"endpoint {record.name!r} has no front")
        target.base = _http_url(str(front["host"]), int(front["port"]))
        target.url = target.base + "/predict"
        target.direct = provider.direct_route(record)
        if record.details.get("auth") == "token":
            token = _local_token(provider.store.home)
            target.headers["authorization"] = f"Bearer {token}"
    elif record.type == "ray":
        if not record.url:
            raise UpstreamFailure(503, "NotServing", f"endpoint {record.name!r} has no URL yet")
        target.url = record.url.rstrip("/") + "/predict"
    elif record.type not in CLOUD_TYPES:
        raise UpstreamFailure(
            502, "UnsupportedUpstream",
            f"endpoint {record.name!r} is served by {record.type}, which the gateway cannot reach",
        )  # fmt: skip
    return target


def _http_url(host: str, port: int) -> str:
    """Where this machine reaches a front bound to ``host`` (a wildcard: on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _local_token(home: Path) -> str:
    """The local front's token, read as the local provider reads it (env, else the file)."""
    token = os.environ.get(_TOKEN_ENV, "").strip()
    if token:
        return token
    try:
        token = (home / _TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UpstreamFailure(
            502, "UpstreamAuth", f"cannot read the local endpoints' token: {exc.strerror}"
        ) from None
    if not token:
        raise UpstreamFailure(502, "UpstreamAuth", "the local endpoints' token file is empty")
    return token


def passed_headers(items: Any) -> list[tuple[str, str]]:
    """An upstream's response headers the caller gets (end-to-end ones only)."""
    return [(k, v) for k, v in items if k.lower() not in _DROP_OUT]


async def forward_http(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes | AsyncIterator[bytes],
    headers: dict[str, str],
    timeout: float,
) -> Answer:
    """POST ``body`` to an HTTP upstream on a pooled keep-alive connection, the bytes as they
    came (no JSON re-encoding). A small answer is read whole; a large or unsized one streams.
    ``headers`` are the caller's content headers (plus Content-Length when streaming).

    aiohttp, not httpx: measured on the same endpoint, httpx's AsyncClient spends 0.95 ms of CPU
    per request, aiohttp's 0.18 ms, and the gateway's overhead is mostly CPU."""
    import aiohttp

    assert target.url is not None
    limits = aiohttp.ClientTimeout(sock_connect=min(5.0, timeout), sock_read=timeout)
    for attempt in (1, 2):
        try:
            resp = await session.post(
                target.url, data=body, headers={**headers, **target.headers}, timeout=limits
            )
            break
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # a pooled connection the upstream closed as it was reused: a pure prediction whose
            # bytes are still here is sent once more, on a fresh connection
            if (
                attempt == 2
                or not isinstance(body, bytes)
                or isinstance(exc, aiohttp.ClientConnectorError)
            ):
                raise _unreachable(target, exc) from None
        except TimeoutError as exc:
            raise UpstreamFailure(504, "UpstreamTimeout", _said(target, exc)) from None
        except aiohttp.ClientError as exc:
            raise _unreachable(target, exc) from None
    version = resp.headers.get(VERSION_HEADER) or target.fallback_version
    out = passed_headers(resp.headers.items())
    length = resp.content_length
    if length is not None and length <= BUFFER_MAX:
        try:
            data = await resp.read()
        except TimeoutError as exc:
            raise UpstreamFailure(
                504, "UpstreamTimeout", _said(target, exc), version=version
            ) from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailure(
                502, "UpstreamBroken", _said(target, exc), version=version
            ) from None
        finally:
            resp.release()
        return Answer(resp.status, out, data, version)

    async def close() -> None:
        resp.release()

    return Answer(resp.status, out, resp.content.iter_any(), version, close=close)


async def forward_lean(
    client: UpstreamClient,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
) -> Answer:
    """POST a buffered ``body`` to a local front with the lean client (``mlcloud.proxy_client``,
    the front's own: a third of aiohttp's CPU per request). The answer is buffered whole, as
    the front itself buffers it; its raw headers are passed on without being decoded."""
    assert target.base is not None
    sent = [*headers.items(), *target.headers.items()]
    for attempt in (1, 2):
        try:
            async with asyncio.timeout(timeout):
                status, raw, data = await client.request(
                    target.base, "POST", "/predict", sent, body
                )
            break
        except TimeoutError:  # before OSError: TimeoutError is one
            late = TimeoutError(f"no answer within {timeout:g}s")
            raise UpstreamFailure(504, "UpstreamTimeout", _said(target, late)) from None
        except OSError as exc:
            # refused, or a pooled connection the front closed as it was reused: a pure
            # prediction whose bytes are still here is sent once more, on a fresh connection
            if attempt == 2:
                raise _unreachable(target, exc) from None
    version, out = _passed_raw(raw)
    return Answer(status, [], data, version or target.fallback_version, raw=out)


def _passed_raw(raw: list[tuple[bytes, bytes]]) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    """The version an upstream's raw headers name, and the ones the caller gets (lower-cased,
    end-to-end only)."""
    version, out = None, []
    for name, value in raw:
        low = name.lower()
        if low == _VERSION_RAW:
            version = version or value.decode("latin-1")
        elif low not in _DROP_OUT_RAW:
            out.append((low, value))
    return version, out


async def forward_direct(
    client: UpstreamClient,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
) -> Answer | None:
    """POST a buffered ``body`` straight to one of a local endpoint's servers, chosen by the
    endpoint's own routing (``target.direct``: the provider's ``direct_route``, which says why),
    and counted there. ``None``: no server took it (every one tried refused or broke the
    connection before answering): the caller sends it through the front, which knows more."""
    route = target.direct
    assert route is not None
    block = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("utf-8", "surrogateescape")
    clock = time.perf_counter
    for attempt in range(_DIRECT_TRIES):
        chosen = route.route()
        if chosen is None:
            return None
        url, version = chosen
        started = clock()
        try:
            async with asyncio.timeout(timeout):
                status, raw, data = await client.forward(url, b"POST", b"/predict", block, body)
        except TimeoutError:  # before OSError: TimeoutError is one
            route.answered(url, 504, (clock() - started) * 1e3)
            late = TimeoutError(f"no answer within {timeout:g}s")
            raise UpstreamFailure(
                504, "UpstreamTimeout", _said(target, late), version=version
            ) from None
        except OSError as exc:
            # refused: the server is gone (a switch stopped it, or it died); a pooled
            # connection broken as it was reused is tried once more before giving up on it
            if isinstance(exc, ConnectionRefusedError) or attempt > 0:
                route.unreachable(url)
            continue
        route.answered(url, status, (clock() - started) * 1e3)
        # the version is the route's: a model server does not name itself
        return Answer(status, [], data, version, raw=_passed_raw(raw)[1])
    return None


_DIRECT_TRIES = 3


def _unreachable(target: Target, exc: Exception) -> UpstreamFailure:
    return UpstreamFailure(502, "UpstreamUnreachable", _said(target, exc))


def _said(target: Target, exc: Exception) -> str:
    what = str(exc) or type(exc).__name__
    return f"endpoint {target.name!r} ({target.type}) did not answer at {target.url}: {what}"


def classify(status: int) -> tuple[int, str] | None:
    """How an upstream's non-2xx answer reaches the caller: None to pass it on as it is (the
    caller's request was refused by the model: 4xx), else the gateway's own status and kind.
    The upstream refusing the gateway's credentials or route (401/403/404) is the gateway's
    problem, not the caller's: 502."""
    if status < 400:
        return None
    if status in (401, 403, 404, 407):
        return 502, "UpstreamRefused"
    if status < 500:
        return None
    if status == 503:
        return 503, "UpstreamUnavailable"
    if status == 504:
        return 504, "UpstreamTimeout"
    return 502, "UpstreamError"
