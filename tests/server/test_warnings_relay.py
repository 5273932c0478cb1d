"""mlcloud's warnings told to the caller (``warnings_relay``): each request's own, in its
answer's ``x-mlcloud-warning`` headers, however many run at once in the threadpool (as
``mlcloud.api`` calls do), every time (never deduplicated), and none outside a request."""

from __future__ import annotations

import asyncio
import json
import time
import warnings

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlcloud.errors import MlcloudWarning
from mlcloud.server import warnings_relay
from mlcloud.server.warnings_relay import HEADER, RelayWarnings


def _call(tag: str, n: int) -> str:
    for i in range(n):
        time.sleep(0.01)  # the calls overlap in the threadpool
        warnings.warn(MlcloudWarning(f"{tag} #{i}: “quoted” ünïcode"), stacklevel=1)
    return tag


async def warn(request: Request) -> JSONResponse:
    tag, n = request.path_params["tag"], int(request.query_params["n"])
    return JSONResponse(await run_in_threadpool(_call, tag, n))


def test_each_request_gets_its_own_warnings_every_time() -> None:
    with warnings.catch_warnings():
        shown: list[str] = []
        warnings.showwarning = lambda message, *_args, **_kw: shown.append(str(message))
        warnings_relay.install()
        warnings_relay.install()  # a second app in the process: one hook
        _relayed_per_request()
        _call("z", 1)  # no request: shown as it was before the hook
    assert shown == ["z #0: “quoted” ünïcode"]


def _relayed_per_request() -> None:
    app = Starlette(routes=[Route("/warn/{tag}", warn)])
    relayed = RelayWarnings(app)

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=relayed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            asks = [client.get(f"/warn/{tag}", params={"n": n})
                    for tag, n in [("a", 3), ("b", 0), ("c", 2), ("a", 3)]]  # fmt: skip
            return list(await asyncio.gather(*asks))

    answers = asyncio.run(calls())
    got = [[json.loads(v) for v in r.headers.get_list(HEADER)] for r in answers]
    assert got == [
        [f"a #{i}: “quoted” ünïcode" for i in range(3)],
        [],
        [f"c #{i}: “quoted” ünïcode" for i in range(2)],
        [f"a #{i}: “quoted” ünïcode" for i in range(3)],  # the same warnings again: relayed
    ]
