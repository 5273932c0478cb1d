"""Canary deploys and rollouts on the local provider, end to end: real ``bentoml serve``
servers behind the real front, a real client loop counting answers by ``x-mlcloud-version``.

One endpoint for the module (each BentoML start costs seconds), walked through: a canary deploy
split by weight and rolled back by ``set_traffic``; a rollout of a model that answers 500 on
purpose (rolled back before its bake ends, failures only in the canary's share, the stable
version never stopped); a healthy rollout promoted step by step; a killed controller resumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from mlcloud import modeldir, rollouts
from mlcloud.config import Profile
from mlcloud.errors import Conflict, SpecError
from mlcloud.records import EndpointRecord
from mlcloud.specs import Deployment
from mlcloud.store import Store
from providers.local import endpoint_procs
from providers.local.provider import LocalProvider
from tests.canary_load import PredictLoad, failing_model
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.conftest import MLCLOUD, cli_env

pytestmark = pytest.mark.timeout(600)

NAME = "canary-ep"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
        mp.delenv("MLCLOUD_API_TOKEN", raising=False)
        mp.delenv("MLCLOUD_PROVIDER", raising=False)
        mp.setenv("MLCLOUD_DEPLOY_TIMEOUT", "120")
        yield home
        for pid in _controller_pids(home):
            with_suppress_kill(pid)
        endpoint_procs.stop([], endpoint_procs.home_tag(home))


@pytest.fixture(autouse=True)
def _module_home(_isolated_mlcloud: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollouts (and their detached controllers) open the store of $MLCLOUD_HOME: this
    module's, not the per-test one the conftest sets."""
    monkeypatch.setenv("MLCLOUD_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))


def with_suppress_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _controller_pids(home: Path) -> list[int]:
    return [
        p.pid
        for p in psutil.process_iter(["cmdline", "environ"])
        if "mlcloud.rollouts" in " ".join(p.info["cmdline"] or [])
        and (p.info["environ"] or {}).get("MLCLOUD_HOME") == str(home)
    ]


@pytest.fixture(scope="module")
def provider(home: Path) -> Iterator[LocalProvider]:
    store = Store.open(home)
    yield LocalProvider(Profile("local", "local"), store)
    store.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    root = tmp_path_factory.mktemp("models")
    x, y = load_iris(return_X_y=True)
    return {
        "lr": modeldir.save(LogisticRegression(max_iter=500).fit(x, y), "sklearn", root / "lr"),
        "good": make_custom_model(root, "good"),
        "good2": make_custom_model(root, "good2"),
        "good3": make_custom_model(root, "good3"),
        "good4": make_custom_model(root, "good4"),
        "good5": make_custom_model(root, "good5"),
        "failing": failing_model(root),
    }


@pytest.fixture(scope="module")
def stable(provider: LocalProvider, models: dict[str, Path]) -> Iterator[EndpointRecord]:
    record = provider.deploy(provider.plan_deploy(Deployment(name=NAME, model=str(models["lr"]))))
    yield record
    provider.undeploy(NAME)


class Load(PredictLoad):
    """A client loop through the front: answers counted by (version, status)."""

    def __init__(self, url: str) -> None:
        super().__init__(lambda: url, "/predict", {"Content-Type": "application/json"}, 0.002)


def _wait_final(rollout_id: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        row = rollouts.get(rollout_id, heal=False)
        if row.state in ("promoted", "rolled_back", "aborted", "failed"):
            return row
        assert time.monotonic() < deadline, f"rollout still {row.state}: {row.decisions}"
        time.sleep(0.2)


def _alive(servers: list[dict[str, Any]]) -> list[bool]:
    return [endpoint_procs.alive(s) for s in servers]  # type: ignore[arg-type]


# ---- the provider's traffic split -----------------------------------------------------------
def test_canary_deploy_splits_by_weight_and_set_traffic_retires(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path]
) -> None:
    assert stable.details["traffic"] == {"v1": 100} and stable.details["newest"] == "v1"
    deployment = Deployment(
        name=NAME, model=str(models["good"]), trust=TRUSTED, traffic={"new": 20, "previous": 80}
    )
    plan = provider.plan_deploy(deployment)
    switch = next(s for s in plan.steps if s.call == "local.SwitchUpstreams")
    assert switch.request["traffic"] == {"v1": 80, "v2": 20}
    assert not any(s.call == "local.DrainAndStop" for s in plan.steps)  # v1 keeps serving
    record = provider.deploy(plan)
    assert record.details["traffic"] == {"v1": 80, "v2": 20}
    assert record.details["newest"] == "v2" and set(record.details["versions"]) == {"v1", "v2"}
    assert record.details["versions"]["v2"]["sha256"] == modeldir.digest(models["good"])
    assert record.url
    with Load(record.url) as load:
        while sum(load.answers.values()) < 100:
            time.sleep(0.05)
    assert load.failures == [] and all(status == 200 for _, status in load.answers)
    share = load.by_version()
    assert abs(share["v2"] / sum(share.values()) - 0.2) < 0.03, share  # exact up to the cycle
    front = provider.version_stats(NAME)["versions"]
    assert front["v2"]["requests"] >= share["v2"] and front["v2"]["errors"] == 0

    v2_ports = record.details["versions"]["v2"]["ports"]
    v2_servers = [s for s in record.details["servers"] if s["port"] in v2_ports]
    with pytest.raises(SpecError, match="adding up"):
        provider.set_traffic(NAME, {"v1": 50})
    with Load(record.url) as load:
        back = provider.set_traffic(NAME, {"v1": 100})
        time.sleep(0.3)
    assert back.details["traffic"] == {"v1": 100} and set(back.details["versions"]) == {"v1"}
    assert load.failures == [] and all(status == 200 for _, status in load.answers)
    assert _alive(v2_servers) == [False] * len(v2_servers)  # the version left out is retired
    assert _alive(back.details["servers"]) == [True]
    assert provider.endpoint_status(NAME).details["traffic"] == {"v1": 100}


def test_canary_needs_one_serving_version(provider: LocalProvider, models: dict[str, Path]) -> None:
    deployment = Deployment(
        name="nothing-yet", model=str(models["good"]), trust=TRUSTED,
        traffic={"new": 10, "previous": 90},
    )  # fmt: skip
    with pytest.raises(Conflict, match="exactly one"):
        provider.plan_deploy(deployment)


# ---- rollouts -------------------------------------------------------------------------------
def test_failing_canary_is_rolled_back_before_the_bake_ends(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path]
) -> None:
    stable_servers = provider.endpoint_status(NAME).details["servers"]
    with pytest.raises(SpecError, match="callers would break"):  # sklearn -> custom
        rollouts.start(str(models["failing"]), NAME, trust_code=True)
    with pytest.raises(SpecError, match="p99_ms needs a number"):  # before anything starts
        rollouts.start(str(models["failing"]), NAME, gate="p99_ms<1s", force=True)
    assert rollouts.list_rollouts(NAME) == []
    assert stable.url
    with Load(stable.url) as load:
        row = rollouts.start(
            str(models["failing"]), NAME, canary=10, bake_s=120, gate="error_rate<5%,p99_ms<2000",
            min_requests=10, trust_code=True, force=True,
        )  # fmt: skip
        started = time.monotonic()
        assert row.state == "baking" and row.controller and row.controller["pid"]
        final = _wait_final(row.id, 100)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
    assert final.state == "rolled_back", final.decisions
    assert elapsed < final.bake_s, "decided before the bake ended"
    actions = [d["action"] for d in final.decisions]
    assert actions == ["start", "deploy", "rollback"], final.decisions
    numbers = final.decisions[-1]["numbers"]
    assert numbers["errors"] >= 10 and numbers["error_rate"] > 0.05
    assert "error_rate" in final.decisions[-1]["reason"]
    canary = final.canary_version
    # failures only in the canary's share; the stable version answered every other request
    assert load.failures == []
    bad = {k: n for k, n in load.answers.items() if k[1] != 200}
    assert bad and set(bad) == {(canary, 500)}, load.answers
    assert load.answers[(final.stable_version, 200)] > 0
    share = load.by_version()
    assert share[canary] / sum(share.values()) < 0.2, share
    # the old version never stopped; the canary is gone
    now = provider.endpoint_status(NAME)
    assert now.details["traffic"] == {final.stable_version: 100}
    assert [s["pid"] for s in now.details["servers"]] == [s["pid"] for s in stable_servers]
    assert _alive(stable_servers) == [True] * len(stable_servers)


def test_healthy_canary_is_promoted_step_by_step(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path]
) -> None:
    before = provider.endpoint_status(NAME)
    (old,) = before.details["traffic"]
    assert stable.url
    with Load(stable.url) as load:
        row = rollouts.start(
            str(models["good2"]), NAME, canary=20, bake_s=3, steps=[20, 50, 100],
            gate="error_rate<1%,p99_ms<5000", min_requests=5, trust_code=True, force=True,
            follow=True,
        )  # fmt: skip
        time.sleep(0.3)
    assert row.state == "promoted", row.decisions
    assert [d["action"] for d in row.decisions] == ["start", "deploy", "step", "promote"]
    assert row.decisions[2]["numbers"]["next_weight"] == 50
    assert load.failures == [] and all(status == 200 for _, status in load.answers)
    after = provider.endpoint_status(NAME)
    assert after.details["traffic"] == {row.canary_version: 100}
    assert after.details["newest"] == row.canary_version != old
    assert _alive(before.details["servers"]) == [False]  # the old version retired
    assert load.by_version()[old] > 0 and load.by_version()[row.canary_version] > 0


def test_a_killed_controller_is_resumed(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path], home: Path
) -> None:
    assert stable.url
    with Load(stable.url):
        row = rollouts.start(
            str(models["good3"]), NAME, canary=10, bake_s=4, gate="error_rate<1%",
            min_requests=3, trust_code=True, force=True,
        )  # fmt: skip
        assert row.controller
        first = int(row.controller["pid"])
        time.sleep(1.0)
        os.kill(first, signal.SIGKILL)
        psutil.Process(first).wait(10) if psutil.pid_exists(first) else None
        assert rollouts.get(row.id, heal=False).state == "baking"
        resumed = rollouts.get(row.id)  # a look at it restarts its controller
        assert resumed.controller and int(resumed.controller["pid"]) != first
        final = _wait_final(row.id, 60)
    assert final.state == "promoted", final.decisions
    assert [d["action"] for d in final.decisions] == ["start", "deploy", "promote"]
    assert (home / "rollouts" / f"r-{row.id}.log").exists()


def test_promotion_moves_champion_when_the_model_came_from_a_ref(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path]
) -> None:
    from mlcloud import api

    api.register_model(str(models["good4"]), "canary-model", alias="champion", reason="first")
    api.register_model(str(models["good5"]), "canary-model", reason="the candidate")
    assert stable.url
    with Load(stable.url) as load:
        row = rollouts.start(
            "canary-model:2", NAME, canary=30, bake_s=2, gate="error_rate<1%,p99_ms<5000",
            min_requests=5, trust_code=True, force=True, follow=True,
        )  # fmt: skip
    assert row.state == "promoted" and row.registry_name == "canary-model", row.decisions
    assert load.failures == [] and all(status == 200 for _, status in load.answers)
    moves = [(m.alias, m.from_version, m.to_version) for m in api.alias_history("canary-model")]
    assert moves[-1] == ("champion", 1, 2)
    last = api.alias_history("canary-model")[-1]
    assert last.reason and f"r-{row.id} promoted" in last.reason
    served = provider.endpoint_status(NAME)
    assert served.model_sha256 == modeldir.digest(models["good5"])


def test_inside_the_server_the_gateways_numbers_decide_in_a_thread(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path]
) -> None:
    """The server registers its gateway metrics; a rollout started there runs its controller
    as a thread of the server and judges what the gateway saw (here: a failing canary)."""
    asked: list[tuple[str, str]] = []

    class Seen:  # what the gateway's metrics.version_stats answers
        requests, errors, p50_ms, p99_ms = 40, 12, 3.0, 9.0

    def gateway(endpoint: str, version: str) -> Seen:
        asked.append((endpoint, version))
        return Seen()

    rollouts.use_server_metrics(gateway)
    try:
        row = rollouts.start(
            str(models["good"]), NAME, canary=10, bake_s=60, gate="error_rate<5%",
            min_requests=20, trust_code=True, force=True,
        )  # fmt: skip
        assert row.controller and row.controller.get("thread") == f"rollout-r-{row.id}"
        assert row.controller["pid"] == os.getpid()
        final = _wait_final(row.id, 60)
    finally:
        rollouts.use_server_metrics(None)
    assert final.state == "rolled_back", final.decisions
    assert asked and asked[-1] == (NAME, final.canary_version)
    assert final.decisions[-1]["numbers"]["errors"] == 12
    assert "error_rate 30.00%" in final.decisions[-1]["reason"]
    assert provider.endpoint_status(NAME).details["traffic"] == {final.stable_version: 100}


def _cli(*args: str, command: str = "rollouts") -> Any:
    out = subprocess.run(
        [*MLCLOUD, command, *args], capture_output=True, text=True, timeout=180, env=cli_env()
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if "-o" in args else out.stdout


def test_cli_starts_shows_lists_and_aborts(
    provider: LocalProvider, stable: EndpointRecord, models: dict[str, Path]
) -> None:
    args = (
        str(models["good"]), "--name", NAME, "--canary", "30", "--bake", "10m",
        "--gate", "error_rate<1%,p99_ms<5000", "--trust-code", "--force", "-o", "json",
    )  # fmt: skip
    planned = _cli(*args, "--dry-run", command="deploy")  # the canary's first step, as sent
    (switch,) = [step for step in planned["steps"] if step["call"] == "local.SwitchUpstreams"]
    assert sorted(switch["request"]["traffic"].values()) == [30, 70]
    assert all(step["call"] != "local.DrainAndStop" for step in planned["steps"])
    started = _cli(*args, command="deploy")  # the headline command starts the same rollout
    assert started["state"] == "baking" and started["controller"]["pid"]
    rid = started["id"]
    assert provider.endpoint_status(NAME).details["traffic"][started["canary_version"]] == 30
    aborted = _cli("abort", rid, "-o", "json")
    assert aborted["state"] == "aborted"
    assert aborted["decisions"][-1]["action"] == "abort"
    assert provider.endpoint_status(NAME).details["traffic"] == {started["stable_version"]: 100}
    listed = _cli("-o", "json")
    assert rid in [r["id"] for r in listed]
    assert {r["id"]: r["state"] for r in listed}[rid] == "aborted"
    shown = _cli("show", rid)
    assert f"rollout {rid}: aborted" in shown and "decisions:" in shown and "abort" in shown
