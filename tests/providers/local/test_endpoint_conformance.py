"""The local provider against the endpoint conformance suite (real ``bentoml serve`` processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from mlcloud.config import Profile
from mlcloud.provider import EndpointRecord, Provider
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.provider import LocalProvider
from tests.conformance.endpoints import EndpointConformance

pytestmark = pytest.mark.timeout(300)


def _listen_addresses(pid: int) -> set[str]:
    proc = psutil.Process(pid)
    found = set()
    for p in (proc, *proc.children(recursive=True)):
        found |= {c.laddr.ip for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
    return found


class TestLocalEndpointConformance(EndpointConformance):
    @pytest.fixture
    def provider(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalProvider]:
        home = tmp_path / "home"
        monkeypatch.setenv("MLCLOUD_HOME", str(home))
        monkeypatch.delenv("MLCLOUD_API_TOKEN", raising=False)
        store = Store.open(home)
        yield LocalProvider(Profile("local", "local"), store)
        # Whatever a failing test left behind: stop every process tagged with this home.
        endpoint_procs.stop([], endpoint_procs.home_tag(home))
        store.close()

    def settle_endpoint(self, provider: Provider, record: EndpointRecord) -> EndpointRecord:
        # deploy already waited for readiness; check the default exposure on the way.
        front = record.details["front"]
        assert front["host"] == "127.0.0.1" and record.details["auth"] == "none"
        assert _listen_addresses(front["pid"]) == {"127.0.0.1"}
        for server in record.details["servers"]:
            assert _listen_addresses(server["pid"]) == {"127.0.0.1"}
        return provider.endpoint_status(record.name)

    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name="split", model=model, traffic={"a": 50, "b": 50})
