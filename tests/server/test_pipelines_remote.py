"""``mlcloud pipelines …`` against a real team server gives the same output as run locally.

One store (MLCLOUD_HOME, SQLite) and one real ``mlcloud server`` on it: a small pipeline of real
local jobs runs through the CLI with MLCLOUD_SERVER + an admin token (its runner started by the
server), and every command that reads it is run both ways and compared (stdout, stderr, exit
status). A bad pipeline file is refused on the caller's machine (exit 2, no request sent); a
read token may dry-run and read but not run; changes are in the server's audit log."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pipelines.conftest import STEP_PY, job, write
from tests.server.serverproc import (
    RunningServer,
    both,
    cli,
    free_port,
    start_server,
    token,
)

pytestmark = pytest.mark.timeout(300)
RUN_ID = re.compile(r"\b(rpipe-[0-9a-f]{6})\b")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-pipelines")


@pytest.fixture(scope="module")
def tokens(home: Path) -> dict[str, str]:
    return {"admin": token(home, "alice", "admin"), "read": token(home, "dash", "read")}


@pytest.fixture(scope="module")
def server(home: Path, tokens: dict[str, str]) -> Iterator[RunningServer]:
    srv = start_server(home)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rpipe")
    (root / "step.py").write_text(STEP_PY)
    data = {
        "name": "rpipe",
        "params": {"n": 2},
        "steps": [
            {"name": "work", "job": job("work", SCORE="0.7")},
            {"name": "check", "condition": "work.metrics.score * params.n > 1"},
        ],
        "triggers": [{"drift": {}}],
    }
    write(root, data)
    write(root, {"name": "x", "steps": [{"name": "a", "condition": "b.metrics.x > 1"}]}, "bad.yaml")
    return root


def remote(
    home: Path, server: RunningServer, tok: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return cli(home, *args, MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=tok)


def _settled(home: Path, run_id: str) -> dict[str, object]:
    """Wait (bounded) until the run ends, so the comparisons read a run that no longer moves."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = json.loads(cli(home, "pipelines", "show", run_id, "-o", "json").stdout)
        if shown["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return shown  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end in 60s")


def _logged(home: Path, run_id: str) -> None:
    """Wait (bounded) for the runner's last log line: it is written after the run's end."""
    deadline = time.monotonic() + 30
    while "run SUCCEEDED" not in cli(home, "pipelines", "logs", run_id).stdout:
        assert time.monotonic() < deadline, f"run {run_id}: no end in its log"
        time.sleep(0.2)


def test_run_through_the_server_reads_the_same(
    home: Path, server: RunningServer, tokens: dict[str, str], project: Path
) -> None:
    admin, path = tokens["admin"], str(project / "pipeline.yaml")
    started = remote(home, server, admin, "pipelines", "run", path, "--follow", "-o", "json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)  # the progress went to stderr
    assert run["state"] == "SUCCEEDED" and "  work           SUCCEEDED" in started.stderr
    assert [s["step"] for s in run["steps"]] == ["work", "check"]
    assert run["steps"][1]["needs"] == ["work"] and run["steps"][0]["duration_s"] > 0
    run_id = run["id"]
    _logged(home, run_id)
    audit = json.loads(cli(home, "tokens", "audit", "-n", "50", "-o", "json").stdout)
    assert next(
        (e["actor"], e["status"]) for e in audit
        if e["action"] == "POST /v1/pipelines/runs" and e["target"] == run_id
    ) == ("alice", 201)  # fmt: skip
    assert json.loads(cli(home, "pipelines", "show", run_id, "-o", "json").stdout) == run
    code, shown, _ = both(home, server, admin, "pipelines", "show", run_id)
    assert code == 0 and "work.metrics.score=0.7" in shown
    both(home, server, admin, "pipelines", "show", run_id, "-o", "json")
    both(home, server, admin, "pipelines")
    assert RUN_ID.findall(both(home, server, admin, "pipelines", "runs", "rpipe")[1]) == [run_id]
    both(home, server, admin, "pipelines", "runs", "-o", "json", "-n", "1")
    assert "run SUCCEEDED" in both(home, server, admin, "pipelines", "logs", run_id)[1]
    assert "step done" in both(home, server, admin, "pipelines", "logs", run_id, "work")[1]
    assert both(home, server, admin, "pipelines", "logs", run_id, "check")[1].startswith(
        "step check (condition) is SUCCEEDED"
    )
    assert both(home, server, admin, "pipelines", "cancel", run_id)[1] == (
        f"run {run_id}: SUCCEEDED\n"
    )
    both(home, server, admin, "pipelines", "resume", run_id, "-o", "json")
    # a run started on the server, followed as text, cached, prints as a local one does
    local = cli(home, "pipelines", "run", path, "--follow")
    answered = remote(home, server, admin, "pipelines", "run", path, "--follow")
    assert "(cached)" in local.stdout and local.returncode == answered.returncode == 0
    assert _followed(answered) == _followed(local)


def _followed(done: subprocess.CompletedProcess[str]) -> tuple[list[str], str]:
    """``--follow``'s lines but the passing RUNNING ones (a poll every 0.2 s sees them or not)."""
    lines = RUN_ID.sub("<run>", done.stdout).splitlines()
    return [line for line in lines if not line.rstrip().endswith("RUNNING")], done.stderr


def test_dry_run_the_same_and_a_read_token_may(
    home: Path, server: RunningServer, tokens: dict[str, str], project: Path
) -> None:
    path = str(project / "pipeline.yaml")
    for output in ("text", "json"):
        args = ("pipelines", "run", path, "--dry-run", "-o", output)
        local = cli(home, *args)
        answered = remote(home, server, tokens["read"], *args)
        assert answered.returncode == local.returncode == 0, answered.stderr
        job_id = re.compile(r"\bwork-[0-9a-f]{6}\b")  # each plan names a new job
        assert job_id.sub("<id>", answered.stdout) == job_id.sub("<id>", local.stdout)
        assert answered.stderr == local.stderr
    assert "## work: job on local" in cli(home, "pipelines", "run", path, "--dry-run").stdout


def test_bad_file_refused_here_and_read_token_refused_on_run(
    home: Path, server: RunningServer, tokens: dict[str, str], project: Path
) -> None:
    bad = str(project / "bad.yaml")
    code, _, err = both(home, server, tokens["admin"], "pipelines", "run", bad)
    assert code == 2 and err.startswith("error: invalid pipeline x: step 'a', condition:")
    # read and validated on this machine: no server needs to answer for the refusal
    nowhere = f"http://127.0.0.1:{free_port()}"
    offline = cli(home, "pipelines", "run", bad, MLCLOUD_SERVER=nowhere, MLCLOUD_TOKEN="x")
    assert (offline.returncode, offline.stderr) == (2, err)
    good = str(project / "pipeline.yaml")
    before = cli(home, "pipelines", "runs", "-o", "json").stdout
    refused = remote(home, server, tokens["read"], "pipelines", "run", good)
    assert refused.returncode != 0 and "this needs admin" in refused.stderr, refused.stderr
    assert cli(home, "pipelines", "runs", "-o", "json").stdout == before  # nothing started
    entries = json.loads(cli(home, "tokens", "audit", "-n", "1", "-o", "json").stdout)
    assert (entries[0]["actor"], entries[0]["action"], entries[0]["status"]) == (
        "dash", "POST /v1/pipelines/runs", 403,
    )  # fmt: skip


def test_errors_the_same(
    home: Path, server: RunningServer, tokens: dict[str, str], project: Path
) -> None:
    admin, path = tokens["admin"], str(project / "pipeline.yaml")
    for args in (
        ("pipelines", "show", "nope-123"),
        ("pipelines", "logs", "nope-123"),
        ("pipelines", "resume", "nope-123"),
        ("pipelines", "trigger", "nope"),
        ("pipelines", "run", path, "--set", "params.z=1"),
        ("pipelines", "run", path, "-p", "nosuch"),
        ("pipelines", "run", path, "-p", "nosuch", "--dry-run"),
    ):
        code, _, err = both(home, server, admin, *args)
        assert code == 2 and err.startswith("error:") and "Traceback" not in err, (args, err)


def test_schedule_trigger_unschedule(
    home: Path, server: RunningServer, tokens: dict[str, str], project: Path
) -> None:
    admin, path = tokens["admin"], str(project / "pipeline.yaml")
    local = cli(home, "pipelines", "schedule", path, "-o", "json")
    answered = remote(home, server, admin, "pipelines", "schedule", path, "-o", "json")
    assert answered.returncode == local.returncode == 0, answered.stderr
    assert (answered.stdout, answered.stderr) == (local.stdout, local.stderr)
    both(home, server, admin, "pipelines", "schedule", path)
    fired = remote(home, server, admin, "pipelines", "trigger", "rpipe", "--reason", "drift",
                   "--detail", "psi 0.4", "-o", "json")  # fmt: skip
    assert fired.returncode == 0, fired.stderr
    firing = json.loads(fired.stdout)
    assert firing["reason"] == "drift: psi 0.4" and firing["pipeline"] == "rpipe"
    if firing["run_id"]:  # started by the server: let it end before reading the store
        _settled(home, firing["run_id"])
    scheduled = both(home, server, admin, "pipelines", "scheduled", "-o", "json")[1]
    entry = json.loads(scheduled)[0]
    assert entry["file"] == path and entry["last_firings"][-1]["reason"] == "drift: psi 0.4"
    both(home, server, admin, "pipelines", "scheduled")
    gone = remote(home, server, admin, "pipelines", "unschedule", "rpipe")
    assert gone.stdout == "rpipe: unscheduled\n", gone.stderr
    assert both(home, server, admin, "pipelines", "unschedule", "rpipe")[1] == (
        "rpipe: was not scheduled\n"
    )
