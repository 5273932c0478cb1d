"""`mlcloud train` killed with SIGKILL at any moment: no job lost, none left PENDING forever.

A record exists only for a job that runs or that has a clear end. The CLI is killed for real,
at chosen points (a wrapper kills its own process from inside the submit) and at spread delays.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlcloud import api
from mlcloud.records import JobRecord, JobState
from mlcloud.store import Store
from providers.local import procs
from tests.conftest import MLCLOUD, REPO

# Runs the real CLI, SIGKILLing itself at one point of the submit: "before-lock" (the record
# written, nothing on disk yet), "before-spawn" (the job dir and its lock made, the supervisor
# not started) or "after-spawn" (started, its pid not yet recorded by the submitter).
KILLER = """
import os, signal, sys
from providers.local import procs, supervisor
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
def spawn_and_die(*args, **kwargs):
    real_spawn(*args, **kwargs)
    die()
real_spawn = supervisor.spawn
if sys.argv[1] == "before-lock":
    procs.take_lock = die
else:
    supervisor.spawn = spawn_and_die if sys.argv[1] == "after-spawn" else die
from mlcloud.cli import main
main(["train", sys.argv[2]])
"""


def _job_yaml(tmp_path: Path, seconds: float = 0.5) -> Path:
    (tmp_path / "main.py").write_text(f"import time; time.sleep({seconds}); print('ran')")
    path = tmp_path / "job.yaml"
    path.write_text(f"name: kill\ncommand: [{sys.executable}, main.py]\n")
    return path


def _killed_at(point: str, job_yaml: Path) -> JobRecord:
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, point, str(job_yaml)],
        cwd=job_yaml.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (record,) = Store.open().list_jobs()
    return record


def _settled(job_id: str, timeout: float = 60) -> JobRecord:
    """The job as listings show it, once it has ended."""
    deadline = time.monotonic() + timeout
    while True:
        (record,) = [r for r in api.list_jobs() if r.id == job_id]
        if record.state.terminal:
            return record
        assert time.monotonic() < deadline, f"{job_id} still {record.state}"
        time.sleep(0.1)


@pytest.mark.parametrize("point", ["before-lock", "before-spawn"])
def test_killed_before_its_supervisor_started_is_failed_not_pending(
    tmp_path: Path, point: str
) -> None:
    record = _killed_at(point, _job_yaml(tmp_path))
    assert record.state is JobState.PENDING  # as the killed CLI left it
    started = time.monotonic()
    final = _settled(record.id, timeout=5)
    assert time.monotonic() - started < 5  # the first listing resolves it
    assert final.state is JobState.FAILED and final.attempts == 0
    assert "never started" in (final.message or "")
    assert procs.job_processes(record.id) == []


def test_killed_right_after_starting_its_supervisor_the_job_runs(tmp_path: Path) -> None:
    record = _killed_at("after-spawn", _job_yaml(tmp_path))
    final = _settled(record.id)
    assert final.state is JobState.SUCCEEDED, final.message
    assert "supervisor" in final.details  # recorded by the supervisor itself
    assert "ran" in "\n".join(api.job(record.id).logs())


def test_killed_after_starting_its_supervisor_a_later_death_is_noticed(tmp_path: Path) -> None:
    record = _killed_at("after-spawn", _job_yaml(tmp_path, seconds=60))
    deadline = time.monotonic() + 30
    while "supervisor" not in (record := Store.open().get_job(record.id)).details:
        assert time.monotonic() < deadline, "the supervisor never recorded itself"
        time.sleep(0.1)
    os.kill(record.details["supervisor"]["pid"], signal.SIGKILL)
    final = _settled(record.id, timeout=15)
    assert final.state is JobState.FAILED and "supervisor" in (final.message or "")
    assert procs.job_processes(record.id) == []


@pytest.mark.slow
def test_real_kills_at_spread_delays_lose_nothing(tmp_path: Path) -> None:
    """12 `mlcloud train` processes SIGKILLed from before their start-up to after their submit:
    afterwards every record has ended and every job directory has a record."""
    job_yaml = _job_yaml(tmp_path, seconds=0.2)
    argv = [*MLCLOUD, "train", str(job_yaml), "--output", "json"]
    start = time.monotonic()
    subprocess.run(argv, cwd=tmp_path, capture_output=True, check=True, timeout=60)
    whole = time.monotonic() - start  # one full submit, here and now
    kills = 12
    for i in range(kills):
        proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL)
        time.sleep(whole * (0.2 + 0.8 * i / (kills - 1)))
        proc.kill()
        proc.wait()
    store = Store.open()
    for record in store.list_jobs(limit=100):
        _settled(record.id)
    listed = api.list_jobs(limit=100)
    assert all(r.state in (JobState.SUCCEEDED, JobState.FAILED) for r in listed), [
        (r.id, r.state) for r in listed
    ]
    for r in listed:  # every job that ran is known by its supervisor; the rest never started
        assert ("supervisor" in r.details) if r.attempts else "never started" in (r.message or "")
    recorded = {r.id for r in listed}
    dirs = {d.name for d in (store.home / "jobs").iterdir()}
    assert dirs <= recorded, f"job directories without a record: {dirs - recorded}"
    cli = [*MLCLOUD, "jobs", "list", "--output", "json"]
    shown = json.loads(subprocess.run(cli, capture_output=True, text=True, check=True).stdout)
    assert {r["state"] for r in shown} <= {"SUCCEEDED", "FAILED"}
