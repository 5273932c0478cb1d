"""A supervisor killed with SIGKILL: its job is not left RUNNING, its processes not orphaned.

The policy is clean-up, not adoption (see ``jobs._clean_up``): on Linux the kernel sends the
supervisor's children SIGTERM as it dies, and the next listing stops whatever is left (found by
``MLCLOUD_JOB_ID``, the rendezvous store included) and fails the job, saying why.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from mlcloud import api
from mlcloud.config import Profile
from mlcloud.records import JobRecord, JobState
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider, procs

ESCAPER = """
import subprocess, sys, time
# a grandchild in a session of its own, like torchrun's workers: not in our process group
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print("started", flush=True)
time.sleep(300)
"""


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(Profile("local", "local", {"cancel_grace": 3}), Store.open())


def _running(provider: LocalProvider, job_id: str, processes: int) -> JobRecord:
    deadline = time.monotonic() + 60
    while True:
        record = provider.store.get_job(job_id)
        if record.state is JobState.RUNNING and len(procs.job_processes(job_id)) >= processes:
            return record
        assert time.monotonic() < deadline, f"job {job_id} never ran {processes} processes"
        time.sleep(0.1)


def _kill_supervisor(record: JobRecord) -> None:
    sup = psutil.Process(record.details["supervisor"]["pid"])
    sup.send_signal(signal.SIGKILL)
    sup.wait(10)


def test_listing_notices_a_killed_supervisor_and_cleans_up(
    provider: LocalProvider, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(ESCAPER)
    job = TrainingJob(name="k", source=str(tmp_path), command=[sys.executable, "main.py"])
    record = provider.submit_job(provider.plan_job(job))
    record = _running(provider, record.id, processes=2)
    worker = psutil.Process(record.details["pids"][0])
    _kill_supervisor(record)
    if sys.platform.startswith("linux"):  # the kernel tells the worker at once: SIGTERM
        worker.wait(10)
    started = time.monotonic()
    (listed,) = [r for r in api.list_jobs() if r.id == record.id]
    noticed = time.monotonic() - started
    assert listed.state is JobState.FAILED
    assert f"its supervisor (pid {record.details['supervisor']['pid']}) died" in (
        listed.message or ""
    )
    assert procs.job_processes(record.id) == []  # the escaped grandchild too
    assert noticed < 10, f"the listing took {noticed:.1f} s"
    events = provider.store.job_events(record.id)
    assert events[-1]["state"] == "FAILED" and events[-1]["message"] == listed.message
    # Once noticed, a listing is one look at a finished record.
    assert [r.state for r in api.list_jobs() if r.id == record.id] == [JobState.FAILED]


def test_a_listing_leaves_live_jobs_alone(provider: LocalProvider, tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import time; time.sleep(30)")
    job = TrainingJob(name="alive", source=str(tmp_path), command=[sys.executable, "main.py"])
    record = _running(provider, provider.submit_job(provider.plan_job(job)).id, processes=1)
    try:
        for _ in range(3):
            (listed,) = [r for r in api.list_jobs() if r.id == record.id]
            assert listed.state is JobState.RUNNING
        assert procs.alive(record.details["supervisor"])
    finally:
        provider.cancel_job(record.id)


def _gone(proc: psutil.Process) -> bool:
    """Ended (a zombie nobody reaps yet has ended too)."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_distributed_job_rendezvous_store_is_found_and_stopped(
    provider: LocalProvider, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text("import time; time.sleep(120)")
    job = TrainingJob(
        name="dk",
        source=str(tmp_path),
        command=[sys.executable, "main.py"],
        nodes={"min": 1, "max": 2},
    )
    plan = provider.plan_job(job)
    port = int(plan.volatile[0])
    # two torchrun agents, their two workers, and the rendezvous store
    record = _running(provider, provider.submit_job(plan).id, processes=5)
    store_procs = [
        p for p in procs.job_processes(record.id) if "providers.local.rdzv_store" in p.cmdline()
    ]
    assert len(store_procs) == 1, "the rendezvous store carries MLCLOUD_JOB_ID"
    assert _listening(port)
    _kill_supervisor(record)
    (listed,) = [r for r in api.list_jobs() if r.id == record.id]
    assert listed.state is JobState.FAILED
    assert procs.job_processes(record.id) == []
    assert _gone(store_procs[0])
    assert not _listening(port), "the rendezvous store still listens"
    # cancel after the fact finds nothing left either, and changes nothing
    assert provider.cancel_job(record.id).state is JobState.FAILED


def test_cancelled_before_the_supervisor_ran_it_does_not_run(
    provider: LocalProvider, tmp_path: Path
) -> None:
    """A job ended while its supervisor was starting is not run behind the record's back."""
    (tmp_path / "main.py").write_text("open('ran', 'w').close()\nimport time; time.sleep(30)")
    job = TrainingJob(name="early", source=str(tmp_path), command=[sys.executable, "main.py"])
    plan = provider.plan_job(job)
    from providers.local import supervisor

    real_spawn = supervisor.spawn

    def cancel_then_spawn(*args: object, **kwargs: object) -> int:
        provider.store.update_job(plan.id, state=JobState.CANCELLED, message="cancelled")
        return real_spawn(*args, **kwargs)  # type: ignore[arg-type]  # the same arguments

    supervisor.spawn = cancel_then_spawn  # type: ignore[assignment]  # a test seam
    try:
        record = provider.submit_job(plan)
    finally:
        supervisor.spawn = real_spawn
    deadline = time.monotonic() + 30
    while procs.lock_held(Path(record.details["job_dir"]) / "supervisor.lock"):
        assert time.monotonic() < deadline, "the supervisor kept running"
        time.sleep(0.1)
    assert provider.job_status(record.id).state is JobState.CANCELLED
    assert procs.job_processes(record.id) == []
    assert "already CANCELLED: stopping it" in "\n".join(provider.job_logs(record.id))


def test_the_lock_is_released_when_its_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "supervisor.lock"
    assert procs.lock_held(lock) is None
    fd = procs.take_lock(lock)
    child = os.fork()
    if child == 0:  # holds the same open file, as a supervisor does
        os.close(0)
        time.sleep(30)
        os._exit(0)
    os.close(fd)
    assert procs.lock_held(lock) is True
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    assert procs.lock_held(lock) is False
