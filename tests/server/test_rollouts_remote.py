"""Canary rollouts through the team server, end to end (issue 15's "Done when"): a real
``mlcloud server`` on a real PostgreSQL store, tokens, and the real CLI with MLCLOUD_SERVER.

One server and one local endpoint for the module (a BentoML start costs seconds). A client loop
calls predict through the gateway throughout and counts answers by the ``x-mlcloud-version``
the gateway attributes them to. A canary that answers 500 on purpose is rolled back by the
server's own controller (a thread of the server, judging the gateway's numbers) before its bake
ends, the failures confined to its share; a healthy one is promoted step by step; the CLI prints
the same whether it runs locally or against the server; a server restart resumes a rollout.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers.local import endpoint_procs
from tests.canary_load import PredictLoad, failing_model
from tests.conformance.endpoints import make_custom_model
from tests.server.serverproc import RunningServer, cli, start_server

pytestmark = pytest.mark.timeout(600)

NAME = "rollout-ep"
FINAL = ("promoted", "rolled_back", "aborted", "failed")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("rollouts-remote")
    yield home
    endpoint_procs.stop([], endpoint_procs.home_tag(home))  # whatever a failed test left


@pytest.fixture(scope="module")
def db(pg_database: str) -> dict[str, str]:
    """The environment naming the module's PostgreSQL store (server and local CLI alike)."""
    return {"MLCLOUD_DATABASE_URL": pg_database}


@pytest.fixture(scope="module")
def tokens(home: Path, db: dict[str, str]) -> dict[str, str]:
    made = {}
    for name, role in (("alice", "admin"), ("bob", "read")):
        done = cli(home, "tokens", "create", name, "--role", role, **db)
        assert done.returncode == 0, done.stderr
        made[role] = done.stdout.strip()
    return made


def _start(home: Path, db: dict[str, str]) -> RunningServer:
    env = {
        **db,
        "MLCLOUD_DEPLOY_TIMEOUT": "120",
        "MLCLOUD_GATEWAY_TARGET_TTL_S": "0.5",
    }
    return start_server(home, "--predict-rate", "100000", env=env)


class Server:
    """The module's server; ``restart`` replaces it (same store, a new process)."""

    def __init__(self, home: Path, db: dict[str, str]) -> None:
        self.home, self.db = home, db
        self.now = _start(home, db)

    def restart(self) -> None:
        assert self.now.stop() in (0, -15), self.now.log_text()[-3000:]  # SIGTERM: graceful
        self.now = _start(self.home, self.db)


@pytest.fixture(scope="module")
def server(home: Path, db: dict[str, str], tokens: dict[str, str]) -> Iterator[Server]:
    srv = Server(home, db)
    yield srv
    srv.now.stop()


def remote(server: Server, tokens: dict[str, str], *args: str, role: str = "admin") -> Any:
    """``mlcloud ARGS`` against the server; the parsed JSON with ``-o json``."""
    done = cli(server.home, *args, MLCLOUD_SERVER=server.now.url, MLCLOUD_TOKEN=tokens[role])
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout) if "json" in args else done.stdout


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    made = {v: make_custom_model(root, v) for v in ("stable", "good", "good2", "good3")}
    made["failing"] = failing_model(root)
    return made


@pytest.fixture(scope="module")
def stable(server: Server, tokens: dict[str, str], models: dict[str, Path]) -> Iterator[str]:
    out = remote(server, tokens, "deploy", str(models["stable"]), "--name", NAME, "--trust-code")
    assert out.startswith(f"endpoint {NAME} is READY"), out
    yield NAME
    cli(server.home, "undeploy", NAME, MLCLOUD_SERVER=server.now.url,
        MLCLOUD_TOKEN=tokens["admin"])  # fmt: skip


class Load(PredictLoad):
    """A client loop calling predict through the gateway (a read token); answers counted by
    (x-mlcloud-version, status). ``server`` is re-read on each reconnect (a restart)."""

    def __init__(self, server: Server, token: str) -> None:
        headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
        super().__init__(lambda: server.now.url, f"/v1/endpoints/{NAME}:predict", headers,
                         pause=0.01, reconnect_pause=0.05)  # fmt: skip


def _wait_final(server: Server, token: str, rid: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with httpx.Client(headers={"authorization": f"Bearer {token}"}, timeout=30) as http_:
        while True:
            row = http_.get(f"{server.now.url}/v1/rollouts/{rid}").json()
            if row["state"] in FINAL:
                return dict(row)
            assert time.monotonic() < deadline, f"rollout still {row['state']}: {row}"
            time.sleep(0.3)


def _traffic(server: Server, tokens: dict[str, str]) -> dict[str, int]:
    shown = remote(server, tokens, "endpoints", "show", NAME, "-o", "json")
    return dict(shown["details"]["traffic"])


def test_failing_canary_is_rolled_back_by_the_server_before_its_bake_ends(
    server: Server, tokens: dict[str, str], models: dict[str, Path], stable: str
) -> None:
    (old,) = _traffic(server, tokens)
    with Load(server, tokens["read"]) as load:
        while sum(load.answers.values()) < 20:  # the gateway serves the stable version
            time.sleep(0.05)
        started = time.monotonic()
        row = remote(
            server, tokens, "deploy", str(models["failing"]), "--name", NAME, "--canary", "20",
            "--bake", "2m", "--gate", "error_rate<5%,p99_ms<5000", "--trust-code", "-o", "json",
        )  # fmt: skip
        assert row["state"] == "baking", row
        # the controller is a thread of the server, not a process of the caller
        assert row["controller"]["thread"] == f"rollout-{row['id']}"
        assert row["controller"]["pid"] == server.now.proc.pid
        final = _wait_final(server, tokens["read"], row["id"], 100)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
    assert final["state"] == "rolled_back", final["decisions"]
    assert elapsed < final["bake_s"], "decided before the bake ended"
    assert [d["action"] for d in final["decisions"]] == ["start", "deploy", "rollback"]
    deployed, judged = final["decisions"][1:]
    decided_s = judged["at"] - deployed["at"]  # the canary serving → its rollback recorded
    assert decided_s < 60, decided_s
    assert "error_rate" in judged["reason"] and judged["numbers"]["errors"] >= 20
    canary = final["canary_version"]
    assert canary != old == final["stable_version"]
    # failures only in the canary's share; the stable version answered throughout
    assert load.failures == []
    bad = {k: n for k, n in load.answers.items() if k[1] != 200}
    assert bad and {v for v, _ in bad} == {canary}, load.answers
    assert load.answers[(old, 200)] > 0
    assert load.by_version()[canary] / sum(load.answers.values()) < 0.3, load.answers
    assert _traffic(server, tokens) == {old: 100}


def test_healthy_canary_is_promoted_step_by_step(
    server: Server, tokens: dict[str, str], models: dict[str, Path], stable: str
) -> None:
    (old,) = _traffic(server, tokens)
    registered = remote(server, tokens, "models", "register", str(models["good"]), "-n", "rm")
    assert registered.startswith("registered rm:1 from "), registered
    with Load(server, tokens["read"]) as load:
        shown = remote(
            server, tokens, "rollouts", "start", "rm:1", "--name", NAME,
            "--canary", "20", "--steps", "20,50,100", "--bake", "3s", "--min-requests", "5",
            "--gate", "error_rate<1%,p99_ms<5000", "--trust-code", "--follow",
        )  # fmt: skip
        time.sleep(0.3)
    rid = shown.splitlines()[0].split()[1].rstrip(":")
    assert shown.splitlines()[0] == f"rollout {rid}: promoted", shown
    row = remote(server, tokens, "rollouts", "show", rid, "-o", "json")
    assert [d["action"] for d in row["decisions"]] == ["start", "deploy", "step", "promote"]
    assert row["decisions"][2]["numbers"]["next_weight"] == 50
    assert load.failures == [] and all(status == 200 for _, status in load.answers), load.answers
    assert load.by_version()[old] > 0 and load.by_version()[row["canary_version"]] > 0
    assert _traffic(server, tokens) == {row["canary_version"]: 100}
    # the model came from the registry: champion moved, by the token that started the rollout
    (move,) = remote(server, tokens, "models", "history", "rm", "-o", "json")
    assert (move["alias"], move["to_version"], move["by"]) == ("champion", 1, "alice"), move
    assert f"{rid} promoted" in move["reason"]


def test_cli_prints_the_same_locally_and_through_the_server(
    server: Server, tokens: dict[str, str], models: dict[str, Path], stable: str,
    db: dict[str, str],
) -> None:  # fmt: skip
    volatile = re.compile(r"\b\d+[smhd] ago\b|\b\d{4,5}\b")  # times; each plan's free ports
    canary = ("deploy", str(models["good"]), "--name", NAME, "--trust-code", "--canary", "30")
    for args in (("rollouts",), ("rollouts", "list", "--endpoint", NAME, "-o", "json"),
                 ("rollouts", "show", "r-1"), ("rollouts", "show", "r-2", "-o", "json"),
                 ("rollouts", "show", "r-99"), ("rollouts", "abort", "r-1"),
                 (*canary, "--dry-run", "-o", "json"),  # the first step's split, as planned
                 (*canary, "--gate", "p99_ms<1s"),  # refused before anything is deployed
                 ("rollouts", "start", str(models["good"]), "--name", "nope", "--trust-code"),
                 ("rollouts", "show", "x-1")):  # fmt: skip
        local = cli(server.home, *args, **db)
        there = cli(server.home, *args, MLCLOUD_SERVER=server.now.url,
                    MLCLOUD_TOKEN=tokens["admin"])  # fmt: skip
        assert (there.returncode, volatile.sub("", there.stdout), there.stderr) == (
            local.returncode, volatile.sub("", local.stdout), local.stderr
        ), args  # fmt: skip
        refused = {"nope", "p99_ms<1s", "r-99", "x-1"} & set(args)
        assert local.returncode == (2 if refused else 0), (args, local.stderr)
    refused = cli(server.home, "rollouts", "abort", "r-1", MLCLOUD_SERVER=server.now.url,
                  MLCLOUD_TOKEN=tokens["read"])  # fmt: skip
    assert refused.returncode != 0 and "role read; this needs admin" in refused.stderr


def test_abort_and_a_server_restart_resumes_a_rollout(
    server: Server, tokens: dict[str, str], models: dict[str, Path], stable: str
) -> None:
    (old,) = _traffic(server, tokens)
    with Load(server, tokens["read"]) as load:
        row = remote(
            server, tokens, "rollouts", "start", str(models["good2"]), "--name", NAME,
            "--canary", "30", "--bake", "10m", "--trust-code", "-o", "json",
        )  # fmt: skip
        aborted = remote(server, tokens, "rollouts", "abort", row["id"], "-o", "json")
        assert aborted["state"] == "aborted", aborted
        assert aborted["decisions"][-1]["reason"].startswith(
            f"rollout {row['id']} aborted by alice: rolled back to {old}"
        )
        assert _traffic(server, tokens) == {old: 100}
        row = remote(
            server, tokens, "rollouts", "start", str(models["good3"]), "--name", NAME,
            "--canary", "30", "--bake", "20s", "--min-requests", "5",
            "--gate", "error_rate<1%,p99_ms<5000", "--trust-code", "-o", "json",
        )  # fmt: skip
        first = server.now.proc.pid
        server.restart()  # the controller thread dies with the server; the next one resumes
        resumed = _wait_final(server, tokens["read"], row["id"], 120)
    assert resumed["state"] == "promoted", resumed["decisions"]
    assert resumed["controller"]["pid"] == server.now.proc.pid != first
    assert "rollouts resumed" in server.now.log_text()
    assert [d["action"] for d in resumed["decisions"]] == ["start", "deploy", "promote"]
    assert _traffic(server, tokens) == {resumed["canary_version"]: 100}
    assert load.by_version()[resumed["canary_version"]] > 0
    with server.now.client(tokens["admin"]) as http_:  # every change audited, with its token
        audit = http_.get("/v1/audit", params={"limit": 10_000}).json()
    seen = {(e["actor"], e["action"], e["target"], e["status"]) for e in audit}
    assert ("alice", "POST /v1/rollouts", NAME, 201) in seen
    assert ("alice", f"POST /v1/rollouts/{aborted['id']}:abort", aborted["id"], 200) in seen
    assert ("bob", "POST /v1/rollouts/r-1:abort", "r-1", 403) in seen  # the refused read token


def test_a_pipelines_canary_is_run_by_the_server(
    server: Server, tokens: dict[str, str], models: dict[str, Path], stable: str, tmp_path: Path
) -> None:
    """A pipeline's deploy step with ``canary`` ran in the server's runner, a process without
    the gateway's numbers: a cloud canary was refused there, a local one judged elsewhere. Now
    the runner hands the rollout to the server, whose adopter runs it as one of its threads."""
    (old,) = _traffic(server, tokens)
    registered = remote(server, tokens, "models", "register", str(models["good2"]), "-n", "pm")
    assert registered.startswith("registered pm:1 from "), registered  # the registry vouches
    pipeline = tmp_path / "canary.yaml"
    step = {"model": "pm:1", "endpoint": NAME, "canary": 20, "bake": "3s",
            "gate": "error_rate<1%,p99_ms<5000"}  # fmt: skip
    pipeline.write_text(
        json.dumps({"name": "canary-pipe", "steps": [{"name": "deploy", "deploy": step}]})
    )
    with Load(server, tokens["read"]) as load:
        run = remote(server, tokens, "pipelines", "run", str(pipeline), "--follow", "-o", "json")
        assert run["state"] == "SUCCEEDED", run
        (row,) = [r for r in remote(server, tokens, "rollouts", "list", "-o", "json")
                  if r["model"] == "pm:1"]  # fmt: skip
        final = _wait_final(server, tokens["read"], row["id"], 120)
        time.sleep(0.3)
    assert final["state"] == "promoted", final["decisions"]
    assert final["controller"]["pid"] == server.now.proc.pid, final["controller"]
    assert final["controller"]["thread"] == f"rollout-{final['id']}"
    assert load.failures == [] and all(status == 200 for _, status in load.answers), load.answers
    assert _traffic(server, tokens) == {final["canary_version"]: 100} != {old: 100}
