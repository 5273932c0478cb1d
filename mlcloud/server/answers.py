"""How the gateway answers: the upstream's answer passed on (buffered, raw or streamed) or the
gateway's own problem JSON, each counted in the per-version series and carrying
``x-mlcloud-version`` (the route and the fast path, :mod:`mlcloud.server.fastpath`, share it)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from mlcloud.server.metrics import Metrics
from mlcloud.server.problems import PROBLEM_JSON, http_problem
from mlcloud.server.upstreams import VERSION_HEADER, Answer, Target, UpstreamFailure, classify


async def respond(metrics: Metrics, target: Target, answer: Answer, started: float) -> Response:
    """The model's answer (2xx, or its 4xx refusal of the caller's request) passed on, or the
    gateway's problem for an upstream failure; counted either way."""
    name, version = target.name, answer.version
    failure = classify(answer.status)
    if failure is not None:
        excerpt = await _excerpt(answer)
        status, kind = failure
        metrics.observe(name, version, status, since(started), kind)
        detail = f"endpoint {name!r} ({target.type}) answered {answer.status}: {excerpt}"
        upstream = UpstreamFailure(status, kind, detail, upstream_status=answer.status)
        return failure_response(upstream, version)
    if isinstance(answer.body, bytes):
        metrics.observe(name, version, answer.status, since(started))
        if answer.raw is not None:
            return _RawResponse(answer.status, answer.raw, answer.body, version)
        response = Response(answer.body, answer.status)
        _add_headers(response, answer.headers, version)
        return response

    async def body() -> AsyncIterator[bytes]:
        status, error = answer.status, None
        try:
            assert not isinstance(answer.body, bytes)
            async for chunk in answer.body:
                yield chunk
        except Exception:
            status, error = 502, "UpstreamBroken"
            raise
        finally:
            if answer.close is not None:
                await answer.close()
            metrics.observe(name, version, status, since(started), error)

    streamed = StreamingResponse(body(), answer.status)
    _add_headers(streamed, answer.headers, version)
    return streamed


class _RawResponse(Response):
    """An upstream's buffered answer with its raw headers, sent as they are (no header objects
    built per answer: the predict path's hottest lines)."""

    def __init__(
        self, status: int, raw: list[tuple[bytes, bytes]], body: bytes, version: str
    ) -> None:
        self.status_code, self.body, self.background = status, body, None
        self.raw_headers = [
            *raw,
            (b"content-length", b"%d" % len(body)),
            (_VERSION_RAW, version.encode("latin-1")),
        ]


_VERSION_RAW = VERSION_HEADER.encode()


def _add_headers(response: Response, headers: list[tuple[str, str]], version: str) -> None:
    for key, value in headers:
        response.headers.append(key, value)
    response.headers[VERSION_HEADER] = version


async def _excerpt(answer: Answer, limit: int = 500) -> str:
    if isinstance(answer.body, bytes):
        data = answer.body
    else:
        data = b""
        try:
            async for chunk in answer.body:
                data += chunk
                if len(data) >= limit:
                    break
        finally:
            if answer.close is not None:
                await answer.close()
    return data[:limit].decode(errors="replace")


def since(started: float) -> float:
    return time.perf_counter() - started


def too_large(limit: int) -> Response:
    body = http_problem(
        413, "BodyTooLarge", f"the request body is larger than the limit of {limit} bytes",
        hint="send fewer instances per request",
    )  # fmt: skip
    return problem_response(body, 413, {"connection": "close"})


def failure_response(failure: UpstreamFailure, version: str | None) -> Response:
    extra: dict[str, Any] = {}
    if failure.upstream_status is not None:
        extra["upstream_status"] = failure.upstream_status
    if version is not None:
        extra["version"] = version
    hint = "the caller's request was fine; retry later" if failure.status in (503, 504) else None
    body = http_problem(failure.status, failure.kind, failure.detail, hint, **extra)
    headers = {VERSION_HEADER: version} if version is not None else {}
    if failure.retry_after is not None:
        headers["retry-after"] = str(failure.retry_after)
    return problem_response(body, failure.status, headers)


def problem_response(
    body: dict[str, Any], status: int, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_JSON)
