"""The gateway's endpoint lookups against a real store: many first callers share one lookup, a
stale target keeps serving while it is re-read in the background, a forgotten endpoint ends in
a 404 (NotFoundLocally), and the version an answer is attributed to when the upstream is silent.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mlcloud.errors import NotFoundLocally
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.server import gateway as gw
from mlcloud.server.metrics import Metrics
from mlcloud.server.upstreams import record_version
from mlcloud.store import Store


def _front(store: Store, port: int) -> None:
    front = {"host": "127.0.0.1", "port": port, "pid": 1}
    store.put_endpoint(
        EndpointRecord("a", "local", "local", EndpointState.READY, details={"front": front})
    )


def test_lookups_are_shared_and_refreshed_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLCLOUD_HOME", str(tmp_path))
    store = Store.open()
    _front(store, 1111)
    calls: list[str] = []
    real = gw._resolve

    def counted(*args: object, **kwargs: object) -> gw.Target:
        calls.append(str(args[0]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gw, "_resolve", counted)

    async def scenario() -> None:
        gateway = gw.Gateway(gw.GatewayConfig(target_ttl_s=0.2), Metrics())
        try:
            targets = await asyncio.gather(*[gateway.target("a", None) for _ in range(20)])
            assert {t.url for t in targets} == {"http://127.0.0.1:1111/predict"}
            assert calls == ["a"], "twenty first callers, one lookup"
            _front(store, 2222)  # the front moved (a restart)
            await asyncio.sleep(0.3)
            stale = await gateway.target("a", None)
            assert stale.url == "http://127.0.0.1:1111/predict"  # served while re-read
            for _ in range(50):
                await asyncio.sleep(0.02)
                if (await gateway.target("a", None)).url.endswith(":2222/predict"):  # type: ignore[union-attr]
                    break
            assert (await gateway.target("a", None)).url == "http://127.0.0.1:2222/predict"
            store.delete_endpoint("a", "local")
            await asyncio.sleep(0.3)
            await gateway.target("a", None)  # stale: answers, and the re-read finds it gone
            await asyncio.sleep(0.3)
            with pytest.raises(NotFoundLocally):
                await gateway.target("a", None)
        finally:
            await gateway.aclose()

    asyncio.run(scenario())
    store.close()


def test_attribution_when_the_upstream_is_silent() -> None:
    def rec(**details: object) -> EndpointRecord:
        return EndpointRecord("e", "p", "local", EndpointState.READY, model_sha256="ab" * 32,
                              details=dict(details))  # fmt: skip

    assert record_version(rec(traffic={"v2": 100})) == "v2"
    assert record_version(rec(traffic={"v1": 0, "v2": 100})) == "v2"
    assert record_version(rec(traffic={"v1": 90, "v2": 10})) == "unattributed"  # never a guess
    assert record_version(rec(newest="v3")) == "v3"
    assert record_version(rec()) == "sha256:" + "ab" * 6
