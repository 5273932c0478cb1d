"""The predict fast path: ``POST /v1/endpoints/{name}:predict`` with a small body, in pure ASGI.

Profiled at concurrency 8, FastAPI's routing, dependency injection and request objects cost
the gateway more CPU than forwarding the prediction did. This middleware answers the one hot
route before any of that, with the same checks and answers as the route (``gateway.predict``):
the same token check and rate limit (``auth.authorize``), body limit, target lookup, problem
JSON, ``x-mlcloud-version`` and per-version metrics (``gateway.serve``). It sits inside the
access-log middleware, so predictions are still logged with their actor (never audited: a
prediction changes nothing).

What it passes on to the app unchanged: every other route and method, and a predict body that
is unsized or larger than ``gateway.STREAM_MIN`` (the route streams those both ways).
The decision (``eligible``) and the answer (``answer``) are shared with the server's HTTP
protocol (:mod:`mlcloud.server.predict_protocol`), which takes the same requests before ASGI.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlcloud.server import answers
from mlcloud.server import gateway as gw
from mlcloud.server.auth import AuthProblem, authorize
from mlcloud.server.problems import http_problem
from mlcloud.server.upstreams import Answer, Target

log = logging.getLogger("mlcloud.server")
PREFIX, _SUFFIX = "/v1/endpoints/", ":predict"
_WANTED = frozenset({b"content-length", b"content-type", b"accept", b"authorization"})
Headers = dict[bytes, str]  # the request headers the predict path reads, by lower-case name


class ClientGone(Exception):
    """The caller disconnected before its whole body arrived: nothing to answer."""


class PredictFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http":
            found = eligible(scope["method"], scope["path"], scope["headers"])
        if found is None:
            await self.app(scope, receive, send)  # the route: streamed bodies, odd paths, the rest
            return
        name, headers = found
        response = await answer(scope["app"].state, scope, name, headers, lambda: _body(receive))
        if response is not None:
            await response(scope, receive, send)


def eligible(
    method: str,
    path: str,
    raw_headers: Iterable[tuple[bytes, bytes]],
    refused: frozenset[bytes] = frozenset(),
) -> tuple[str, Headers] | None:
    """The endpoint's name and the headers read, for a predict the fast path answers: a POST to
    ``/v1/endpoints/{name}:predict`` whose Content-Length is at most ``STREAM_MIN`` (and that
    has none of the ``refused`` headers)."""
    if method != "POST" or not path.startswith(PREFIX) or not path.endswith(_SUFFIX):
        return None
    name = path[len(PREFIX) : -len(_SUFFIX)]
    headers: Headers = {}
    for key, value in raw_headers:
        if key in _WANTED and key not in headers:  # the first one, as Starlette reads it
            headers[key] = value.decode("latin-1")
        elif key in refused:
            return None
    length = headers.get(b"content-length")
    small = length is not None and length.isdigit() and int(length) <= gw.STREAM_MIN
    if not name or "/" in name or not small:
        return None
    return name, headers


async def answer(
    state: Any, scope: Scope, name: str, headers: Headers, body: Callable[[], Awaitable[bytes]]
) -> Response | None:
    """The answer to an ``eligible`` predict (``body``: reads the request's body), rendered as
    the app renders it; ``None`` when the caller went away before its body arrived."""
    try:
        return await _predict(state, scope, name, headers, body)
    except ClientGone:
        return None
    except Exception as exc:  # as the app's handler answers it: problem JSON, logged
        log.error("unexpected error", exc_info=exc, extra={"path": scope["path"]})
        problem = http_problem(
            500, "InternalError", f"unexpected {type(exc).__name__}",
            hint="the server's log has the traceback", instance=scope["path"],
        )  # fmt: skip
        return answers.problem_response(problem, 500)


async def _predict(
    state: Any, scope: Scope, name: str, headers: Headers, body: Callable[[], Awaitable[bytes]]
) -> Response:
    gateway: gw.Gateway = state.gateway
    scope_state: dict[str, Any] = scope.setdefault("state", {})
    try:
        await authorize(state, headers.get(b"authorization"), "read", "predict", scope_state)
    except AuthProblem as exc:  # as the app's handler renders it
        scope_state["error_kind"] = exc.kind
        problem = http_problem(exc.status, exc.kind, exc.detail, exc.hint, instance=scope["path"])
        return answers.problem_response(problem, exc.status, exc.headers)
    started = time.perf_counter()  # as the route's: after the token check
    if int(headers[b"content-length"]) > gateway.config.max_body:
        return answers.too_large(gateway.config.max_body)
    provider = _provider(scope.get("query_string", b""))
    data = await body()
    content_type = headers.get(b"content-type") or "application/json"
    accept = headers.get(b"accept")

    def forward(target: Target) -> Awaitable[Answer]:
        return gw.forward_bytes(gateway, target, data, content_type, accept, provider)

    return await gw.serve(gateway, name, provider, scope["path"], started, forward)


def _provider(query: bytes) -> str | None:
    """The ``provider`` query parameter (its last value, as the route reads it)."""
    if not query:
        return None
    found = None
    for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "provider":
            found = value
    return found


async def _body(receive: Receive) -> bytes:
    """The whole body (its Content-Length, at most ``STREAM_MIN``, was checked: the server
    holds the caller to it)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
