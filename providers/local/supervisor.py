"""The detached supervisor of one local job: ``python -m providers.local.supervisor SPEC``.

Started by ``submit_job`` in its own session so the job survives the CLI. It runs the planned
commands, restarts plain commands up to ``max_restarts`` times, records every attempt, state and
exit code in the store, turns SIGTERM (``mlcloud cancel``) into SIGTERM → grace → SIGKILL for
every process of the job, and never leaves an orphan: processes are found by their
``MLCLOUD_JOB_ID`` even after leaving the process group.

Each process runs with exactly the plan's ``env`` on top of the environment the supervisor
inherited. Right after starting them, it appends to ``launched.jsonl`` what each process was really
started with, as the kernel reports it (argv, working directory, and of its environment: the keys
the plan sets, and any key whose value differs from what the supervisor inherited; never the rest,
which may hold secrets). That is the far end of ``mlcloud train``: what ``--dry-run`` printed.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict

from providers.local.errors import LocalProcessError

if TYPE_CHECKING:
    from mlcloud.store import Store

# The state store (and psutil) are imported on first use, after the first attempt has started:
# the user's first line should not wait ~70 ms for imports the launch itself does not need.

LAUNCHED_FILE = "launched.jsonl"


class StepSpec(TypedDict):
    argv: list[str]
    env: dict[str, str]  # set on top of the supervisor's environment
    cwd: str


class RdzvSpec(TypedDict):
    host: str
    port: int


class SupervisorSpec(TypedDict):
    """``supervisor.json``: what ``submit_job`` hands the supervisor."""

    job_id: str
    state_db: str
    steps: list[StepSpec]
    rdzv: RdzvSpec | None
    restarts: int
    grace: float
    max_runtime: float
    log: str
    launched: str  # where to append what each started process really got


class Launched(TypedDict):
    """One line of ``launched.jsonl``."""

    attempt: int
    step: int
    pid: int
    argv: list[str]
    cwd: str
    env: dict[str, str]


class Supervisor:
    def __init__(self, spec: SupervisorSpec) -> None:
        self.spec = spec
        self.job_id: str = spec["job_id"]
        self._store: Store | None = None
        self.cancel = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.rdzv: subprocess.Popen[bytes] | None = None
        self.deadline = time.monotonic() + float(spec["max_runtime"])

    @property
    def store(self) -> Store:
        if self._store is None:
            from mlcloud.store import Store

            self._store = Store(Path(self.spec["state_db"]))
        return self._store

    def record(self, state: str | None = None, **fields: Any) -> None:
        """Update this job in the store; ``state`` is a JobState name."""
        from mlcloud.records import JobState

        self.store.update_job(self.job_id, state=JobState(state) if state else None, **fields)

    def log(self, out: BinaryIO, text: str) -> None:
        out.write(f"[mlcloud] {text}\n".encode())
        out.flush()

    def run(self) -> None:
        with open(self.spec["log"], "ab", buffering=0) as out:
            try:
                self._run(out)
            except Exception as e:  # record, never lose the job's end
                self.log(out, f"supervisor error: {e}")
                self.record("FAILED", message=str(e))
            finally:
                self._stop_everything(grace=2.0)

    def _run(self, out: BinaryIO) -> None:
        if self.spec["rdzv"]:
            self._start_rdzv_store(out, self.spec["rdzv"])
        attempts = int(self.spec["restarts"]) + 1
        for attempt in range(1, attempts + 1):
            if self.cancel.is_set():
                break
            self.log(out, f"attempt {attempt}/{attempts} started")
            rc = self._run_attempt(out, attempt)
            if self.cancel.is_set():
                break
            if rc == 0:
                self.log(out, "job succeeded")
                self.record("SUCCEEDED", exit_code=0, message="succeeded")
                return
            if attempt < attempts:
                self.log(out, f"attempt {attempt} failed with exit code {rc}; restarting")
                self.record(
                    "RESTARTING",
                    exit_code=rc,
                    event=f"attempt {attempt} failed with exit code {rc}",
                )
                continue
            self.log(out, f"job failed with exit code {rc}")
            self.record(
                "FAILED", exit_code=rc, message=f"exited with code {rc} after {attempt} attempt(s)"
            )
            return
        self._cancel(out)

    def _run_attempt(self, out: BinaryIO, attempt: int) -> int:
        self.children = []
        for step in self.spec["steps"]:
            self.children.append(
                subprocess.Popen(
                    step["argv"],
                    env={**os.environ, **step["env"]},
                    cwd=step["cwd"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self._record_launched(attempt)
        self.record(
            "RUNNING",
            attempts=attempt,
            event=f"attempt {attempt} started",
            merge_details={"pids": [c.pid for c in self.children]},
        )
        return self._wait()

    def _record_launched(self, attempt: int) -> None:
        """Append what each process of this attempt was really started with (module docstring).
        A process already gone is recorded with what could be read: nothing."""
        import psutil

        lines = []
        for index, (step, child) in enumerate(zip(self.spec["steps"], self.children, strict=True)):
            seen: Launched = {
                "attempt": attempt,
                "step": index,
                "pid": child.pid,
                "argv": [],
                "cwd": "",
                "env": {},
            }
            try:
                proc = psutil.Process(child.pid)
                environ = proc.environ()
                seen["argv"], seen["cwd"] = proc.cmdline(), proc.cwd()
            except psutil.Error:
                environ = {}
            seen["env"] = {
                k: v for k, v in environ.items() if k in step["env"] or os.environ.get(k) != v
            }
            lines.append(json.dumps(seen) + "\n")
        with open(self.spec["launched"], "a", encoding="utf-8") as f:
            f.writelines(lines)

    def _wait(self) -> int:
        """0 when every child succeeded; else the first failure's exit code (128+N if signalled)."""
        while True:
            if self.cancel.is_set():
                return -1
            if time.monotonic() > self.deadline:
                self._stop_children(grace=float(self.spec["grace"]))
                raise TimeoutError(f"exceeded max_runtime ({self.spec['max_runtime']} s)")
            codes = [c.poll() for c in self.children]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                # One node failed: the others cannot finish without it.
                self._stop_children(grace=5.0)
                return _exit_code(failed[0])
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.1)

    def _stop_children(self, grace: float) -> None:
        from providers.local import procs

        groups = [c.pid for c in self.children]
        procs.kill_job_processes(self.job_id, grace=grace, groups=groups)
        for child in self.children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()

    def _cancel(self, out: BinaryIO) -> None:
        self.log(out, "cancel requested: stopping the job")
        self._stop_children(grace=float(self.spec["grace"]))
        self.record("CANCELLED", message="cancelled")
        self.log(out, "job cancelled")

    def _start_rdzv_store(self, out: BinaryIO, rdzv: RdzvSpec) -> None:
        host, port = rdzv["host"], int(rdzv["port"])
        self.rdzv = subprocess.Popen(
            [sys.executable, "-m", "providers.local.rdzv_store", host, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.rdzv.poll() is not None:
                raise LocalProcessError(
                    f"the rendezvous store on {host}:{port} failed to start", code="RendezvousStore"
                )
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise LocalProcessError(
            f"the rendezvous store on {host}:{port} did not start in 60 s", code="RendezvousStore"
        )

    def _stop_everything(self, grace: float) -> None:
        if self.children:
            self._stop_children(grace=grace)
        else:
            from providers.local import procs

            procs.kill_job_processes(self.job_id, grace=grace)
        if self.rdzv is not None and self.rdzv.poll() is None:
            self.rdzv.terminate()
            try:
                self.rdzv.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.rdzv.kill()
        if self._store is not None:
            self._store.close()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def spawn(spec_path: Path, log_path: Path, python: str | None = None) -> int:
    """Start the detached supervisor of one job in its own session; returns its pid.

    From a single-threaded caller (the CLI) on POSIX it is a double fork of the caller, which
    already has everything imported: the user's first line starts ~0.1 s sooner than with a fresh
    interpreter. A threaded caller (a notebook, a server) or another interpreter gets ``python -m
    providers.local.supervisor`` instead, since forking a threaded process is unsafe.
    """
    if python in (None, sys.executable) and hasattr(os, "fork") and threading.active_count() == 1:
        from mlcloud.store import Store

        Store.close_all()  # they reconnect on next use
        return _fork(spec_path, log_path)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [python or sys.executable, "-m", "providers.local.supervisor", str(spec_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI and its terminal
            close_fds=True,
        ).pid


def _fork(spec_path: Path, log_path: Path) -> int:
    sys.stdout.flush()  # or the child would write the caller's pending output again
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # intermediate: new session, fork the supervisor, exit (init adopts it)
        code = 1
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.close(write_end)
                _detached_main(spec_path, log_path)  # never returns
            os.write(write_end, str(grandchild).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    with contextlib.suppress(ChildProcessError):  # a caller that ignores SIGCHLD
        os.waitpid(child, 0)
    if not answer:
        raise LocalProcessError(
            f"could not start the job's supervisor; see {log_path}", code="SupervisorStart"
        )
    return int(answer)


def _detached_main(spec_path: Path, log_path: Path) -> None:
    code = 1
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Every other inherited descriptor goes too: a caller's saved stdout (pytest keeps one)
        # would otherwise keep whoever reads that pipe waiting until the job ends. The caller's
        # SQLite connections were closed before the fork, and its objects are never finalized
        # here: its frames never unwind (os._exit) and the cyclic GC must not collect them.
        gc.freeze()
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        if "logging" in sys.modules:  # handlers of the caller write to descriptors now closed
            sys.modules["logging"].root.handlers.clear()
        sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        # As a fresh interpreter would have them (main() then sets SIGTERM/SIGINT/SIGHUP).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        main([sys.argv[0], str(spec_path)])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no atexit handlers, no finalizers of the caller's objects


def main(argv: list[str]) -> None:
    spec: SupervisorSpec = json.loads(Path(argv[1]).read_text())
    supervisor = Supervisor(spec)

    def on_signal(signum: int, frame: object) -> None:
        supervisor.cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    supervisor.run()


if __name__ == "__main__":
    main(sys.argv)
