"""The local provider against the endpoint conformance suite (real ``bentoml serve`` processes)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from mlcloud.config import Profile
from mlcloud.provider import Provider
from mlcloud.records import EndpointRecord, Plan
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.clients import HttpClient
from providers.local.endpoint_net import http_url
from providers.local.front import CONTROL_PATH, UPSTREAMS_FILE
from providers.local.provider import LocalProvider
from tests.conformance.endpoints import EndpointConformance
from tests.conformance.jobs import Sent

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

    def received_deploy(
        self, provider: Provider, plan: Plan[Deployment], record: EndpointRecord
    ) -> Sent:
        """What the endpoint's processes really run with, and the upstream list the front took.

        ``local.Popen``: the live process (the servers in order, then the front), read from the
        kernel with psutil (``/proc/<pid>/cmdline``, ``cwd``, ``environ``). A process inherits the
        deployer's environment, this test's, so of ``environ`` this keeps the keys the plan sets
        and every key whose value differs from this process's environment: a planned variable
        that never arrived is missing (or has the inherited value), an unplanned one is extra.
        ``local.SwitchUpstreams``: the file the front really reads (its own ``--state-dir``) and
        the generation and upstreams it answers on its control path.
        """
        assert isinstance(provider, LocalProvider)
        started = iter([*record.details["servers"], record.details["front"]])
        sent: Sent = []
        front: dict[str, Any] = record.details["front"]
        for step in plan.steps:
            if step.call == "local.Popen":
                assert "stdin" not in step.request, "a token on stdin is not observable here"
                sent.append((step.call, _started_with(next(started)["pid"], step.request["env"])))
            elif step.call == "local.SwitchUpstreams":
                argv = psutil.Process(front["pid"]).cmdline()
                state_dir = argv[argv.index("--state-dir") + 1]
                url = http_url(front["host"], front["port"]) + CONTROL_PATH
                status, body = HttpClient().request("GET", url)
                assert status == 200, "the front does not answer on its control path"
                state = json.loads(body)
                request = {
                    "file": str(Path(state_dir) / UPSTREAMS_FILE),
                    "generation": state["generation"],
                    "upstreams": state["upstreams"],
                }
                sent.append((step.call, request))
            else:
                pytest.fail(f"{step.call} (an update's) is not observable after the deploy")
        return sent


def _started_with(pid: int, planned_env: dict[str, str]) -> dict[str, Any]:
    proc = psutil.Process(pid)
    environ = proc.environ()
    env = {k: v for k, v in environ.items() if k in planned_env or os.environ.get(k) != v}
    return {"argv": proc.cmdline(), "env": env, "cwd": proc.cwd()}
