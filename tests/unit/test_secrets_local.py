"""Secrets of a local job, end to end through the real CLI and a real supervisor.

A ``{from_env: NAME}`` reference and a literal secret-looking value both reach the job's process,
and neither is in any file under ``$MLCLOUD_HOME`` (state.db, supervisor.json, launched.jsonl,
record.json, logs) nor in anything the CLI prints (``--dry-run``, ``jobs show/list -o json``).
Before issue 16 the same job left its values in 3 files and 4 outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

from mlcloud import sensitive
from tests.conftest import MLCLOUD

PASSWORD = "hunter2-from-the-shell"
API_KEY = "abc123-literal-value"
DB_URL = "db-url-by-reference"  # a reference's value is kept off disk whatever its name
JOB = f"""\
name: secrets
command: [python, job.py]
max_runtime: 2m
env:
  DB_PASSWORD: {{from_env: SHELL_DB_PASSWORD}}
  API_KEY: {API_KEY}
  DB_URL: {{from_env: SHELL_DB_URL}}
  TOKENIZERS_PARALLELISM: "false"
"""
# The job proves what it got by hashes, so its own output holds no secret either.
SCRIPT = """\
import hashlib, json, os
seen = {k: hashlib.sha256(os.environ.get(k, "").encode()).hexdigest()
        for k in ("DB_PASSWORD", "API_KEY", "DB_URL", "TOKENIZERS_PARALLELISM")}
seen["hidden"] = sorted(k for k in os.environ if k.startswith("MLCLOUD_SECRET_VALUE_"))
os.makedirs(os.environ["MLCLOUD_OUTPUT_DIR"], exist_ok=True)
with open(os.path.join(os.environ["MLCLOUD_OUTPUT_DIR"], "seen.json"), "w") as f:
    json.dump(seen, f)
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MLCLOUD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def _files_holding(root: Path, *values: str) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and any(v.encode() in path.read_bytes() for v in values):
            found.append(str(path.relative_to(root)))
    return found


def test_secrets_reach_the_job_and_nothing_else(tmp_path: Path) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(JOB)
    (work / "job.py").write_text(SCRIPT)
    env = {
        **os.environ,
        "MLCLOUD_HOME": str(home),
        "SHELL_DB_PASSWORD": PASSWORD,
        "SHELL_DB_URL": DB_URL,
    }

    plan = run("train", "job.yaml", "--dry-run", "-o", "json", cwd=work, env=env)
    assert plan.returncode == 0, plan.stderr
    (step,) = json.loads(plan.stdout)["steps"]
    assert step["request"]["env_from"] == {
        "DB_PASSWORD": "SHELL_DB_PASSWORD",
        "API_KEY": sensitive.HIDDEN_PREFIX + "API_KEY",
        "DB_URL": "SHELL_DB_URL",
    }
    assert step["request"]["env"]["TOKENIZERS_PARALLELISM"] == "false"  # not secret-looking

    done = run("train", "job.yaml", "--follow", "-o", "json", cwd=work, env=env)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)  # one JSON document: the job's log goes to stderr
    seen = json.loads((Path(record["outputs"]["output_dir"]) / "seen.json").read_text())
    assert seen["DB_PASSWORD"] == _sha(PASSWORD)
    assert seen["API_KEY"] == _sha(API_KEY)
    assert seen["DB_URL"] == _sha(DB_URL)
    assert seen["TOKENIZERS_PARALLELISM"] == _sha("false")
    assert seen["hidden"] == [], "the hand-over variables stay with the supervisor"

    shown = run("jobs", "show", record["id"], "-o", "json", cwd=work, env=env)
    listed = run("jobs", "list", "-o", "json", cwd=work, env=env)
    printed = plan.stdout + done.stdout + done.stderr + shown.stdout + listed.stdout
    assert PASSWORD not in printed and API_KEY not in printed and DB_URL not in printed
    assert json.loads(shown.stdout)["spec"]["env"] == {
        "DB_PASSWORD": {"from_env": "SHELL_DB_PASSWORD"},
        "API_KEY": sensitive.REDACTED,
        "DB_URL": {"from_env": "SHELL_DB_URL"},
        "TOKENIZERS_PARALLELISM": "false",
    }
    assert _files_holding(home, PASSWORD, API_KEY, DB_URL) == []
    job_dir = Path(record["details"]["job_dir"])
    for name in ("supervisor.json", "supervisor.log", "launched.jsonl", "logs/job.log"):
        mode = stat.S_IMODE((job_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} is {mode:o}"
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600


def test_missing_from_env_fails_the_submit_and_records_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(JOB)
    (work / "job.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "SHELL_DB_PASSWORD"}
    out = run("train", "job.yaml", cwd=work, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: env: SHELL_DB_PASSWORD, SHELL_DB_URL are not set")
    assert "hint:" in out.stderr and "Traceback" not in out.stderr
    assert run("jobs", "list", "-o", "json", cwd=work, env=env).stdout.strip() == "[]"


def test_a_home_others_can_read_is_tightened_with_a_warning(tmp_path: Path) -> None:
    home = tmp_path / "shared-home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    (home / "state.db").write_bytes(b"")
    os.chmod(home / "state.db", 0o644)
    env = {**os.environ, "MLCLOUD_HOME": str(home)}
    out = run("jobs", "list", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.startswith(f"warning: {home} was readable by other users (mode 0755)")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600
    again = run("jobs", "list", cwd=tmp_path, env=env)
    assert "warning" not in again.stderr


def test_a_cloud_secret_reference_is_refused_locally(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(
        "name: s\ncommand: [python, job.py]\n"
        "env: {DB_PASSWORD: {secret: 'arn:aws:secretsmanager:us-east-1:1:secret:x'}}\n"
    )
    out = run("train", "job.yaml", "--dry-run", cwd=tmp_path, env=dict(os.environ))
    assert out.returncode == 2, out.stderr  # UnsupportedFeature: the input asks the impossible
    assert out.stderr.startswith("error: local") and "cloud secret store references" in out.stderr
    assert "hint: a local job reads secrets from your environment: {from_env: NAME}" in out.stderr
