"""Local jobs as real detached subprocesses: restarts, cancel without orphans, logs, lineage."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlcloud.config import Profile
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider, procs
from providers.local.job_plan import LocalJobContext
from tests.conftest import MLCLOUD, REPO
from tests.single_threaded import in_fresh_interpreter


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(Profile("local", "local", {"cancel_grace": 3}), Store.open())


def job_in(tmp_path: Path, script: str, **fields: object) -> TrainingJob:
    (tmp_path / "main.py").write_text(script)
    return TrainingJob(
        name="t", source=str(tmp_path), command=[sys.executable, "main.py"], **fields
    )


def wait(provider: LocalProvider, job_id: str, timeout: float = 60) -> JobState:
    deadline = time.monotonic() + timeout
    while not (state := provider.job_status(job_id).state).terminal:
        assert time.monotonic() < deadline, f"still {state}"
        time.sleep(0.1)
    return state


def test_plan_shows_exact_argv_env_cwd(provider: LocalProvider, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    job = job_in(tmp_path, "pass", inputs={"train": str(tmp_path / "data")},
                 hyperparameters={"lr": 0.1}, env={"FOO": "1"}, checkpoint="auto")  # fmt: skip
    plan = provider.plan_job(job).to_dict()
    (step,) = plan["steps"]
    assert step["call"] == "local.Popen"
    assert step["request"]["argv"] == [sys.executable, "main.py"]
    assert step["request"]["cwd"] == str(tmp_path)
    env = step["request"]["env"]
    assert env["FOO"] == "1" and env["MLCLOUD_INPUT_TRAIN"] == str(tmp_path / "data")
    assert json.loads(env["MLCLOUD_HPARAMS"]) == {"lr": 0.1}
    assert env["MLCLOUD_CHECKPOINT_DIR"].endswith("/checkpoints")
    # everything the process gets beyond what it inherits is in the plan, the store too
    assert env["MLCLOUD_STATE_DB"] == str(provider.store.path)


def test_distributed_plan_uses_torchrun_with_loopback_rendezvous(
    provider: LocalProvider, tmp_path: Path
) -> None:
    job = job_in(tmp_path, "pass", nodes={"min": 1, "max": 2}, procs_per_node=2, max_restarts=2)
    plan = provider.plan_job(job)
    assert len(plan.steps) == 2  # two local "nodes"
    argv = plan.steps[0].request["argv"]
    assert argv[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=1:2" in argv and "--nproc-per-node=2" in argv and "--max-restarts=2" in argv
    assert f"--rdzv-id={plan.id}" in argv and "--local-addr=127.0.0.1" in argv
    assert any(a.startswith("--rdzv-endpoint=127.0.0.1:") for a in argv)
    assert any("last_call_timeout=1" in a and "is_host=false" in a for a in argv)
    assert plan.steps[0].request["env"]["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    rdzv_port = next(a for a in argv if a.startswith("--rdzv-endpoint=")).rpartition(":")[2]
    assert plan.volatile == (rdzv_port,)


def test_bad_inputs_are_refused_at_plan_time(provider: LocalProvider, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        provider.plan_job(job_in(tmp_path, "pass", inputs={"x": str(tmp_path / "missing")}))
    with pytest.raises(UnsupportedFeature, match="s3"):
        provider.plan_job(job_in(tmp_path, "pass", checkpoint="s3://b/ck"))


def test_hyperparameters_too_big_to_start_a_process_are_refused_at_plan_time(
    provider: LocalProvider, tmp_path: Path
) -> None:
    """One environment string holds at most 128 KiB (Linux): refused when planned, with what to
    do instead, not ``Argument list too long`` when the job starts."""
    big = {"vocab": "x" * 140_000}
    with pytest.raises(SpecError, match=r"hyperparameters: 137 KiB .*128 KiB") as err:
        provider.plan_job(job_in(tmp_path, "pass", hyperparameters=big))
    assert "inputs" in (err.value.hint or "")
    with pytest.raises(SpecError, match=r"env\.BIG: "):
        provider.plan_job(job_in(tmp_path, "pass", env={"BIG": "y" * 140_000}))
    # Just under the limit: planned, started and read back whole by the job.
    fits = {"vocab": "x" * 120_000}
    script = (
        "import json, os, sys\n"
        "sys.exit(0 if json.loads(os.environ['MLCLOUD_HPARAMS'])['vocab'] == 'x' * 120_000 else 3)"
    )
    record = provider.submit_job(provider.plan_job(job_in(tmp_path, script, hyperparameters=fits)))
    assert wait(provider, record.id) is JobState.SUCCEEDED


def test_gpus_that_are_not_there(provider: LocalProvider, tmp_path: Path) -> None:
    from providers.local.job_plan import gpu_count

    have = gpu_count()
    with pytest.raises(UnsupportedFeature) as err:
        provider.plan_job(job_in(tmp_path, "pass", resources={"accelerators": have + 1}))
    # one count, in the message (the hint once said "0 GPU(s)" after the message said 1)
    assert f"needs {have + 1} GPU(s), this machine has {have}" in str(err.value)
    assert "GPU(s)" not in (err.value.hint or "")


def test_restarts_up_to_max_and_records_attempts(provider: LocalProvider, tmp_path: Path):
    script = (
        "import os, pathlib, sys\n"
        "p = pathlib.Path('count'); n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n)); print('attempt', n, flush=True)\n"
        "sys.exit(0 if n == 3 else 5)\n"
    )
    record = provider.submit_job(provider.plan_job(job_in(tmp_path, script, max_restarts=2)))
    assert wait(provider, record.id) is JobState.SUCCEEDED
    final = provider.job_status(record.id)
    assert final.attempts == 3 and final.exit_code == 0
    events = provider.store.job_events(record.id)
    said = [e["message"] for e in events if e["message"]]
    assert "attempt 1 failed with exit code 5; next attempt in 1 s" in said
    assert "attempt 2 failed with exit code 5; next attempt in 2 s" in said
    assert "attempt 3 started" in said
    # Backoff (1 s, then 2 s) between attempts; a new attempt carries no old exit code.
    started = [e for e in events if e["state"] == "RUNNING"]
    assert [e["attempt"] for e in started] == [1, 2, 3]
    assert [e["exit_code"] for e in started] == [None, None, None]
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(started)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps


def test_restart_backoff_doubles_up_to_its_cap(provider: LocalProvider, tmp_path: Path) -> None:
    plan = provider.plan_job(job_in(tmp_path, "import sys; sys.exit(4)", max_restarts=3))
    ctx = plan.context_as(LocalJobContext)
    plan = dataclasses.replace(plan, context=dataclasses.replace(ctx, backoff=(0.4, 0.6)))
    record = provider.submit_job(plan)
    assert wait(provider, record.id) is JobState.FAILED
    events = provider.store.job_events(record.id)
    waits = [e["message"] for e in events if e["state"] == "RESTARTING"]
    assert [w.rsplit(" in ", 1)[1] for w in waits] == ["0.4 s", "0.6 s", "0.6 s"]
    started = [e["ts"] for e in events if e["state"] == "RUNNING"]
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.6 and gaps[2] >= 0.6, gaps


def test_fails_after_max_restarts(provider: LocalProvider, tmp_path: Path) -> None:
    record = provider.submit_job(
        provider.plan_job(job_in(tmp_path, "import sys; sys.exit(7)", max_restarts=1))
    )
    assert wait(provider, record.id) is JobState.FAILED
    final = provider.job_status(record.id)
    assert final.exit_code == 7 and final.attempts == 2
    (failed,) = [e for e in provider.store.job_events(record.id) if e["state"] == "FAILED"]
    assert failed["message"] == "exited with code 7 after 2 attempt(s)"
    assert failed["exit_code"] == 7 and failed["attempt"] == 2


ESCAPER = """
import subprocess, sys, time
# a grandchild in a session of its own, like torchrun's workers: not in our process group
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print("started", flush=True)
time.sleep(300)
"""


def test_cancel_leaves_no_orphans(provider: LocalProvider, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(job_in(tmp_path, ESCAPER)))
    deadline = time.monotonic() + 30
    while len(procs.job_processes(record.id)) < 2:
        assert time.monotonic() < deadline, "job processes never started"
        time.sleep(0.1)
    pids = [p.pid for p in procs.job_processes(record.id)]
    cancelled = provider.cancel_job(record.id)
    assert cancelled.state is JobState.CANCELLED
    assert procs.job_processes(record.id) == []
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
    assert provider.cancel_job(record.id).state is JobState.CANCELLED  # idempotent


def test_max_runtime_is_enforced(provider: LocalProvider, tmp_path: Path) -> None:
    record = provider.submit_job(
        provider.plan_job(job_in(tmp_path, "import time; time.sleep(60)", max_runtime=2))
    )
    assert wait(provider, record.id, timeout=30) is JobState.FAILED
    assert "max_runtime" in (provider.job_status(record.id).message or "")


def test_logs_stream_live(provider: LocalProvider, tmp_path: Path) -> None:
    script = "import time\nfor i in range(5):\n    print('line', i, flush=True); time.sleep(0.3)\n"
    record = provider.submit_job(provider.plan_job(job_in(tmp_path, script)))
    seen: list[tuple[float, str]] = []
    for line in provider.job_logs(record.id, follow=True):
        seen.append((time.monotonic(), line))
    lines = [line for _, line in seen if line.startswith("line")]
    assert lines == [f"line {i}" for i in range(5)]
    first = next(t for t, line in seen if line == "line 0")
    last = next(t for t, line in seen if line == "line 4")
    assert last - first > 0.6, "lines arrived as they were written, not all at the end"


def test_job_outlives_the_cli_and_is_recorded(tmp_path: Path) -> None:
    script = "import time; time.sleep(2); print('done after the CLI left', flush=True)"
    (tmp_path / "main.py").write_text(script)
    (tmp_path / "job.yaml").write_text(f"name: det\ncommand: [{sys.executable}, main.py]\n")
    out = subprocess.run([*MLCLOUD, "train", "--output", "json"], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
    job_id = json.loads(out.stdout)["id"]
    store = Store.open()
    assert not store.get_job(job_id).state.terminal  # the CLI is gone, the job is not
    deadline = time.monotonic() + 60
    while not store.get_job(job_id).state.terminal:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert store.get_job(job_id).state is JobState.SUCCEEDED


@pytest.mark.parametrize("caller", ["single-threaded", "threaded"])
def test_supervisor_start_from_either_kind_of_caller(tmp_path: Path, caller: str) -> None:
    """A single-threaded caller forks the supervisor (fast); a threaded one must not fork."""
    if caller == "threaded":
        _start_supervisor_from(caller, tmp_path)
    else:  # this process may hold session servers' threads: a fresh interpreter has none
        in_fresh_interpreter(_start_supervisor_from, caller, tmp_path)


def _start_supervisor_from(caller: str, tmp_path: Path) -> None:
    provider = LocalProvider(Profile("local", "local", {"cancel_grace": 3}), Store.open())
    release = threading.Event()
    if caller == "threaded":
        threading.Thread(target=release.wait, daemon=True).start()
    else:
        assert threading.active_count() == 1, threading.enumerate()
    read_end, write_end = os.pipe()  # stands for a pipe the caller's own caller reads
    try:
        script = "import time; time.sleep(1); print('ran', flush=True)"
        record = provider.submit_job(provider.plan_job(job_in(tmp_path, script)))
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], 5)
        assert ready and os.read(read_end, 1) == b"", "the supervisor holds the caller's pipe"
        sup = psutil.Process(record.details["supervisor"]["pid"])
        deadline = time.monotonic() + 5
        # Empty for an instant after exec: the kernel sets it up after Popen hears of the exec.
        while not sup.cmdline() and time.monotonic() < deadline:
            time.sleep(0.01)
        fresh = "providers.local.supervisor" in " ".join(sup.cmdline())
        assert fresh is (caller == "threaded"), (sup.status(), sup.cmdline())
        assert os.getsid(sup.pid) != os.getsid(0)  # detached from our session
    finally:
        release.set()
        os.close(read_end)
    assert wait(provider, record.id) is JobState.SUCCEEDED
    assert "ran" in "\n".join(provider.job_logs(record.id, follow=False))
    provider.store.get_job(record.id)  # the caller's store reconnected after the fork


def test_iris_example_end_to_end_from_the_cli(tmp_path: Path) -> None:
    out = subprocess.run(
        [*MLCLOUD, "train", str(REPO / "examples/iris/job.yaml"), "--follow"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    assert "test accuracy" in out.stdout and "SUCCEEDED" in out.stdout
    model_dir = next(
        line.split(": ", 1)[1] for line in out.stdout.splitlines() if "model_dir:" in line
    )
    from mlcloud import modeldir

    assert modeldir.verify(Path(model_dir))["framework"] == "sklearn"
    listing = subprocess.run([*MLCLOUD, "jobs", "list"], capture_output=True, text=True)
    assert "iris-" in listing.stdout and "SUCCEEDED" in listing.stdout


def test_a_threaded_caller_cancelling_at_once_does_not_wait_out_the_grace(
    provider: LocalProvider, tmp_path: Path
) -> None:
    """The server is a threaded caller: its supervisors start as fresh interpreters, and a
    cancel right after submit used to kill one before its SIGTERM handler was installed, then
    wait grace + 10 s for a terminal state nobody would record."""
    release = threading.Event()
    threading.Thread(target=release.wait, daemon=True).start()
    try:
        record = provider.submit_job(
            provider.plan_job(job_in(tmp_path, "import time\ntime.sleep(120)"))
        )
        started = time.monotonic()
        cancelled = provider.cancel_job(record.id)
        took = time.monotonic() - started
    finally:
        release.set()
    assert cancelled.state is JobState.CANCELLED and took < 5, took
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if record.id in " ".join(p.info["cmdline"] or [])
    ]
