"""The CLI against a server gives the same output as the CLI run locally.

One store (MLCLOUD_HOME) and one real server on it: each command runs twice, once locally and
once with MLCLOUD_SERVER + a token (MLCLOUD_TOKEN, or MLCLOUD_TOKEN_FILE), and the two outputs
(stdout, stderr, exit status) are compared, for jobs (a real local job), endpoints (a real local
endpoint: deploy, show, list, predict, undeploy) and errors."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from providers.local import endpoint_procs
from tests.conformance.endpoints import make_custom_model
from tests.server.serverproc import RunningServer, both, cli, start_server, token

pytestmark = pytest.mark.timeout(300)
ROW = '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("server-cli")
    yield home
    endpoint_procs.stop([], endpoint_procs.home_tag(home))  # whatever a failed test left


@pytest.fixture(scope="module")
def admin(home: Path) -> str:
    return token(home, "alice", "admin")


@pytest.fixture(scope="module")
def server(home: Path, admin: str) -> Iterator[RunningServer]:
    srv = start_server(home, env={"MLCLOUD_DEPLOY_TIMEOUT": "120"})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def job_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("job")
    (root / "main.py").write_text("print('hello from the job')\n")
    (root / "job.yaml").write_text(
        f"name: hello\nsource: .\ncommand: [{sys.executable}, main.py]\n"
    )
    return root / "job.yaml"


def test_jobs_same_output(home: Path, server: RunningServer, admin: str, job_file: Path) -> None:
    token_file = home / "token"
    token_file.write_text(admin + "\n")
    submitted = cli(home, "train", str(job_file), MLCLOUD_SERVER=server.url,
                    MLCLOUD_TOKEN_FILE=str(token_file))  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert submitted.stderr.startswith(f"submitted {job_id} to local (local)\n")
    followed = cli(home, "logs", job_id, "-f", MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)
    assert "hello from the job" in followed.stdout
    assert both(home, server, admin, "logs", job_id)[1] == followed.stdout
    code, shown, _ = both(home, server, admin, "jobs", "show", job_id)
    assert code == 0 and "state:     SUCCEEDED" in shown
    both(home, server, admin, "jobs", "show", job_id, "-o", "json")
    both(home, server, admin, "jobs")
    both(home, server, admin, "jobs", "list", "-o", "json")
    assert both(home, server, admin, "cancel", job_id)[1] == f"job {job_id}: SUCCEEDED\n"


def test_train_follow_and_dry_run(home: Path, server: RunningServer, admin: str,
                                  job_file: Path) -> None:  # fmt: skip
    remote = cli(home, "train", str(job_file), "-f", MLCLOUD_SERVER=server.url,
                 MLCLOUD_TOKEN=admin)  # fmt: skip
    assert remote.returncode == 0, remote.stderr
    assert "hello from the job" in remote.stdout and "SUCCEEDED" in remote.stdout
    local = cli(home, "train", str(job_file), "--dry-run", "-o", "json")
    remote = cli(home, "train", str(job_file), "--dry-run", "-o", "json",
                 MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)  # fmt: skip
    job_id = re.compile(r"hello-[0-9a-f]{6}")
    assert job_id.sub("<id>", remote.stdout) == job_id.sub("<id>", local.stdout)
    assert remote.returncode == local.returncode == 0


def test_errors_same_output(home: Path, server: RunningServer, admin: str, job_file: Path) -> None:
    code, _, err = both(home, server, admin, "jobs", "show", "no-such-job")
    assert code == 2 and err.startswith("error: no job 'no-such-job'")
    assert both(home, server, admin, "train", str(job_file), "-p", "nosuch", "--dry-run")[0] == 2
    assert both(home, server, admin, "endpoints", "show", "nope")[0] == 2
    assert both(home, server, admin, "undeploy", "nope")[1] == (
        "endpoint nope does not exist (nothing to do)\n"
    )
    code, _, err = both(home, server, admin, "predict", "nope", "--data", ROW)
    assert code == 2, err


def test_endpoint_same_output(home: Path, server: RunningServer, admin: str,
                              tmp_path: Path) -> None:  # fmt: skip
    model = make_custom_model(tmp_path, "setosa")
    deployed = cli(home, "deploy", str(model), "--name", "e1", "--trust-code",
                   MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.startswith("endpoint e1 is READY at http://127.0.0.1:")
    try:
        code, shown, _ = both(home, server, admin, "endpoints", "show", "e1")
        assert code == 0 and "state:        READY" in shown
        both(home, server, admin, "endpoints", "show", "e1", "-o", "json")
        both(home, server, admin, "endpoints")
        both(home, server, admin, "endpoints", "list", "-o", "json")
        dry_run = ("deploy", str(model), "--name", "e1", "--trust-code", "--dry-run", "-o", "json")
        local = cli(home, *dry_run)
        remote = cli(home, *dry_run, MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)
        port = re.compile(r'"\d{4,5}"|: \d{4,5}\b|:\d{4,5}\b')  # each plan picks free ports
        assert port.sub("<port>", remote.stdout) == port.sub("<port>", local.stdout)
        assert remote.returncode == local.returncode == 0 and '"call": "local.' in local.stdout
        code, answer, err = both(home, server, admin, "predict", "e1", "--data", ROW)
        assert code == 0, err
        assert '"setosa"' in answer
        # A warning raised on the server reaches the CLI as the same line: the serving model's
        # signature can no longer be read, so the update goes on unchecked, and says so.
        (model / "mlcloud-model.yaml").unlink()
        other = make_custom_model(tmp_path, "versicolor")
        updated = cli(home, "deploy", str(other), "--name", "e1", "--trust-code",
                      MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)  # fmt: skip
        assert updated.returncode == 0, updated.stderr
        warning = [line for line in updated.stderr.splitlines() if line.startswith("warning:")]
        assert warning == [
            f"warning: endpoint 'e1': the input signature was not checked ({model}: "
            f"{model} is not an mlcloud model directory (no mlcloud-model.yaml)); its callers "
            "may break if the new model takes other inputs"
        ], updated.stderr
    finally:
        removed = cli(home, "undeploy", "e1", MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)
    assert removed.stdout == "endpoint e1 removed\n", removed.stderr
    assert both(home, server, admin, "endpoints", "list", "-o", "json")[1] == "[]\n"


def test_models_same_output(home: Path, server: RunningServer, admin: str,
                            tmp_path: Path) -> None:  # fmt: skip
    """The registry through the server: reads print the same both ways; a change made through
    the server prints what the same change prints locally, and is recorded as the token's."""
    first, second, third = (make_custom_model(tmp_path, v) for v in ("m1", "m2", "m3"))
    there = {"MLCLOUD_SERVER": server.url, "MLCLOUD_TOKEN": admin}
    assert both(home, server, admin, "models")[1].startswith("no registered models yet")
    local = cli(home, "models", "register", str(first), "--name", "m", "--alias", "champion")
    remote = cli(home, "models", "register", str(second), "--name", "m", "--reason", "r2", **there)
    assert (local.returncode, remote.returncode) == (0, 0), (local.stderr, remote.stderr)
    assert local.stdout == f"registered m:1 from {first} on local\nm@champion → 1\n"
    assert remote.stdout == f"registered m:2 from {second} on local\n"
    for args in (("models",), ("models", "list", "-o", "json"), ("models", "show", "m"),
                 ("models", "show", "m:2"), ("models", "show", "m@champion", "-o", "json"),
                 ("models", "history", "m", "-o", "json")):  # fmt: skip
        assert both(home, server, admin, *args)[0] == 0, args
    moved = cli(home, "models", "alias", "m", "champion", "2", "--reason", "better", **there)
    assert moved.stdout == "m@champion: 1 → 2\n", moved.stderr
    back = cli(home, "models", "rollback", "m", "--reason", "worse", "-o", "json", **there)
    assert back.returncode == 0 and json.loads(back.stdout)["to_version"] == 1, back.stderr
    again = cli(home, "models", "alias", "m", "champion", "2", "--if-at", "1", "-o", "json")
    assert again.returncode == 0, again.stderr
    assert set(json.loads(again.stdout)) == set(json.loads(back.stdout))  # the same document
    code, history, _ = both(home, server, admin, "models", "history", "m")
    assert code == 0 and history.count(" alice ") == 2, history  # the token's moves
    refused = both(home, server, admin, "models", "delete", "m:2")  # champion points at it
    assert refused[0] == 1 and refused[2].startswith("error: m:2 is used by m@champion"), refused
    assert both(home, server, admin, "models", "delete", "m")[0] == 2  # no version named
    assert both(home, server, admin, "models", "show", "nope")[0] == 2
    cli(home, "models", "register", str(third), "--name", "m", **there)
    deleted = cli(home, "models", "delete", "m:3", **there)
    assert deleted.stdout == "deleted m:3\n", deleted.stderr
    assert "m:3" not in both(home, server, admin, "models", "show", "m")[1]
