"""``mlcloud pipelines …``, ``mlcloud scheduler`` and ``mlcloud schema pipeline`` through the real
CLI: one JSON document with -o json, one error/hint line and exit 2 for bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import MLCLOUD
from tests.pipelines.conftest import job, write


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLCLOUD, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_schema_pipeline(tmp_path: Path) -> None:
    out = cli("schema", "pipeline", cwd=tmp_path)
    schema = json.loads(out.stdout)
    assert schema["title"] == "Pipeline" and "register" in schema["$defs"]["Step"]["properties"]


def test_run_follow_show_runs_logs_in_json_and_text(project: Path) -> None:
    data = {
        "name": "clipipe",
        "params": {"n": 2},
        "steps": [
            {"name": "work", "job": job("work", SCORE="0.7")},
            {"name": "check", "condition": "work.metrics.score * params.n > 1"},
        ],
        "triggers": [{"drift": {}}],
    }
    path = write(project, data)
    out = cli("pipelines", "run", str(path), "--follow", "-o", "json", cwd=project)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)  # the progress went to stderr
    assert run["state"] == "SUCCEEDED" and "work" in out.stderr
    assert [s["step"] for s in run["steps"]] == ["work", "check"]
    assert run["steps"][1]["needs"] == ["work"] and run["steps"][0]["duration_s"] > 0
    shown = cli("pipelines", "show", run["id"], cwd=project)
    assert shown.returncode == 0 and "work.metrics.score=0.7" in shown.stdout
    listed = json.loads(cli("pipelines", "runs", "-o", "json", cwd=project).stdout)
    assert [r["id"] for r in listed] == [run["id"]]
    logs = cli("pipelines", "logs", run["id"], "work", cwd=project)
    assert "step done" in logs.stdout
    assert "run SUCCEEDED" in cli("pipelines", "logs", run["id"], cwd=project).stdout
    again = cli("pipelines", "run", str(path), "-o", "json", cwd=project)
    assert json.loads(again.stdout)["state"] in ("PENDING", "RUNNING", "SUCCEEDED")
    # the drift hook, through the CLI
    assert cli("pipelines", "schedule", str(path), cwd=project).returncode == 0
    fired = cli("pipelines", "trigger", "clipipe", "--reason", "drift", "--detail", "psi 0.4",
                "-o", "json", cwd=project)  # fmt: skip
    assert json.loads(fired.stdout)["reason"] == "drift: psi 0.4"


def test_bad_input_is_one_error_line_and_exit_2(project: Path) -> None:
    bad = write(project, {"name": "x", "steps": [{"name": "a", "condition": "b.metrics.x > 1"}]})
    out = cli("pipelines", "run", str(bad), cwd=project)
    assert out.returncode == 2
    assert out.stderr.startswith("error: invalid pipeline x: step 'a', condition: unknown step 'b'")
    assert "hint:" in out.stderr and "Traceback" not in out.stderr
    for args in (("pipelines", "show", "nope-123"), ("pipelines", "trigger", "nope"),
                 ("pipelines", "run", str(bad), "--set", "params.z=1")):  # fmt: skip
        out = cli(*args, cwd=project)
        assert out.returncode == 2 and out.stderr.startswith("error:"), (args, out.stderr)


def test_dry_run_text(project: Path) -> None:
    path = write(project, {"name": "dry", "steps": [{"name": "a", "job": job("a")}]})
    out = cli("pipelines", "run", str(path), "--dry-run", cwd=project)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# pipeline dry: 1 step(s)\n## a: job on local\nlocal.Popen:")
    assert cli("pipelines", "runs", "-o", "json", cwd=project).stdout.strip() == "[]"


def test_scheduler_once(project: Path) -> None:
    out = cli("scheduler", "--once", cwd=project)
    assert out.returncode == 0 and out.stdout == ""
