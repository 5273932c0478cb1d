"""The ASGI guard in front of every route: body limit, media type, bounded metrics.

BentoML 1.4.40 has no request-body limit, deserialises ``application/vnd.bentoml+pickle``
bodies with ``pickle.loads`` on any API route, parses text/plain as JSON, and labels its
Prometheus series with the raw request path (so every unknown URL adds a series). Its HTTP
metrics are switched off in the service and this middleware records its own, with a fixed
label set: known routes by name, everything else as ``other``, status as a class (2xx…5xx).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_TYPES = ("application/json",)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_METHODS = frozenset({"GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Metrics:
    """Created on first use: the metrics client exists only inside a BentoML server."""

    def __init__(self) -> None:
        from bentoml._internal.configuration.containers import BentoMLContainer

        client = BentoMLContainer.metrics_client.get()
        self.requests = client.Counter(
            name="mlcloud_http_requests_total",
            documentation="HTTP requests by route (unknown paths as 'other'), method, status class",
            labelnames=["route", "method", "status"],
        )
        self.duration = client.Histogram(
            name="mlcloud_http_request_duration_seconds",
            documentation="HTTP request latency by route",
            labelnames=["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # Per model version (issue 13): what a canary gate or a monitor compares between the
        # versions an endpoint serves; predict routes only, version from the deployment.
        self.version_requests = client.Counter(
            name="mlcloud_model_requests_total",
            documentation="Predict requests by model version and status class",
            labelnames=["version", "status"],
        )
        self.version_errors = client.Counter(
            name="mlcloud_model_errors_total",
            documentation="Predict requests the server failed (5xx) by model version",
            labelnames=["version"],
        )
        self.version_duration = client.Histogram(
            name="mlcloud_model_request_duration_seconds",
            documentation="Predict latency by model version",
            labelnames=["version"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch = client.Histogram(
            name="mlcloud_batch_requests",
            documentation="Requests stacked into one model call by the micro-batcher",
            labelnames=[],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def render_metrics() -> tuple[bytes, str]:
    """The Prometheus exposition of this server (all workers), and its content type."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    metrics()  # register ours even before the first request
    client = BentoMLContainer.metrics_client.get()
    body: bytes = client.generate_latest()  # type: ignore[no-untyped-call]
    return body, client.CONTENT_TYPE_LATEST


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: Iterable[Any] = ()
) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        routes: Iterable[str],
        record: bool = True,
        media: Mapping[str, Iterable[str]] | None = None,
        predict: Iterable[str] = (),
        version: Callable[[], str] | None = None,
    ) -> None:
        self.app = app
        # the predict routes, counted per model version (``version()``: the served one)
        self.predict = frozenset(predict)
        self.version = version
        # route -> the body types it parses itself besides JSON (SageMaker: CSV, JSON Lines)
        self.media = {route: frozenset(types) for route, types in (media or {}).items()}
        self.max_body = max_body
        self.routes = frozenset(routes)
        # False outside a BentoML server (a Ray Serve replica): only the body checks apply
        self.record = record

    def _route(self, path: str) -> str:
        return path if path in self.routes else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        method = scope["method"] if scope["method"] in _METHODS else "other"

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            checked = await self._check_body(scope, receive, send_wrapper)
            if checked is not None:
                await self.app(scope, checked, send_wrapper)
        finally:
            if self.record:
                self._observe(scope["path"], method, status, started)

    def _observe(self, path: str, method: str, status: int, started: float) -> None:
        route = self._route(path)
        m = metrics()
        m.requests.labels(route=route, method=method, status=f"{status // 100}xx").inc()
        elapsed = time.perf_counter() - started
        m.duration.labels(route=route).observe(elapsed)
        if self.version is not None and path in self.predict:
            version = self.version() or "unknown"
            m.version_requests.labels(version=version, status=f"{status // 100}xx").inc()
            m.version_duration.labels(version=version).observe(elapsed)
            errors = m.version_errors.labels(version=version)  # a 0 series until one fails
            if status >= 500:
                errors.inc()

    async def _check_body(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """The receive to use, or None once a 413/415 has been sent."""
        if scope["method"] not in _BODY_METHODS:
            return receive
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1")
        allowed = self.media.get(scope["path"], frozenset())
        if media.lower() not in JSON_TYPES and media.lower() not in allowed:
            # Never let a body reach BentoML's pickle (or form/text) deserialisers.
            wanted = ", ".join(sorted({*JSON_TYPES, *allowed}))
            error = f"Content-Type must be {wanted}, got {media or 'none'!r}"
            await send_json(send, 415, {"error": error})
            return None
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body:
                await self._too_large(send)
                return None
            return receive
        # Chunked upload: buffer up to the limit, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            size += len(message.get("body", b""))
            if size > self.max_body:
                await self._too_large(send)
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, send: Send) -> None:
        await send_json(
            send,
            413,
            {"error": f"request body is larger than the limit of {self.max_body} bytes"},
            [(b"connection", b"close")],
        )
