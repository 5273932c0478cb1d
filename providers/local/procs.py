"""Process bookkeeping for local jobs.

Every process of a job carries ``MLCLOUD_JOB_ID`` in its environment, which is how the job's
processes are found even when they left its process group: torchrun starts each worker in a
session of its own, so killing the agent's group would orphan the workers.

Who owns a job is told by a lock: the submitter takes an exclusive ``flock`` on the job's lock
file before anything else exists on disk and hands the very same open file to the supervisor it
starts, which holds it until it exits. The kernel drops the lock when the last holder dies,
however it dies, so "is anyone still running this job?" is one non-blocking ``flock`` (no pid
that could be recycled, no window between submitter and supervisor).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import psutil

from mlcloud.runtime import ENV_JOB_ID


class ProcessId(TypedDict):
    """pid plus start time, so a recycled pid is never mistaken for our process."""

    pid: int
    create_time: float | None  # None: it had already ended when we looked


def identity(pid: int) -> ProcessId:
    try:
        return {"pid": pid, "create_time": psutil.Process(pid).create_time()}
    except psutil.Error:
        return {"pid": pid, "create_time": None}


def alive(ident: ProcessId) -> bool:
    """Whether the recorded process still runs (a recycled pid does not count)."""
    try:
        proc = psutil.Process(int(ident["pid"]))
        if ident.get("create_time") is not None and proc.create_time() != ident["create_time"]:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.Error, KeyError, TypeError, ValueError):  # a record of another version
        return False


def take_lock(path: Path) -> int:
    """A new lock file at ``path``, held (exclusive ``flock``); returns its descriptor. Made
    under another name and renamed into place, so it is never seen unheld."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return fd


def lock_held(path: Path) -> bool | None:
    """Whether a live process holds the lock file at ``path``; ``None`` when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the shared lock just taken
    return False


def with_env(match: Callable[[dict[str, str]], bool]) -> list[psutil.Process]:
    """Live processes (but this one) whose environment ``match``es; only our own processes'
    environments are readable, so only ours can match."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if match(proc.environ()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def job_processes(job_id: str) -> list[psutil.Process]:
    """Live processes whose environment names this job."""
    return with_env(lambda env: env.get(ENV_JOB_ID) == job_id)


def signal_processes(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            continue


def kill_job_processes(job_id: str, grace: float, groups: list[int] | None = None) -> int:
    """SIGTERM every process of the job (and the given process groups), SIGKILL after ``grace``.

    Returns how many processes of the job were found.
    """
    for pgid in groups or ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    found = job_processes(job_id)
    signal_processes(found, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not job_processes(job_id):
            break
        time.sleep(0.1)
    for pgid in groups or ():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    stragglers = job_processes(job_id)
    signal_processes(stragglers, signal.SIGKILL)
    psutil.wait_procs(stragglers, timeout=5)
    return len(found)
