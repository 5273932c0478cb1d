"""The TimeoutMiddleware fix: timers are cancelled after each request; timeouts still fire."""

from __future__ import annotations

import asyncio
from typing import Any

from serving import bentoml_fixes


def _middleware(delay: float, timeout: float) -> Any:
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return TimeoutMiddleware(app, timeout=timeout)


def _call(middleware: Any, requests: int) -> tuple[list[int], int]:
    """Run ``requests`` requests; return their statuses and the live (uncancelled) timers."""
    statuses: list[int] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main() -> int:
        for _ in range(requests):
            await middleware({"type": "http", "path": "/"}, receive, send)
        loop = asyncio.get_running_loop()
        return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]

    return statuses, asyncio.run(main())


def test_timers_are_released_after_each_request() -> None:
    assert bentoml_fixes.apply()
    statuses, live_timers = _call(_middleware(delay=0, timeout=60), requests=50)
    assert statuses == [200] * 50
    assert live_timers == 0  # unpatched BentoML 1.4.40 leaves 50, each holding a request


def test_timeout_still_answers_504() -> None:
    assert bentoml_fixes.apply()
    statuses, _ = _call(_middleware(delay=1, timeout=0.05), requests=1)
    assert statuses == [504]
