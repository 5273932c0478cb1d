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
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict

from mlcloud import sensitive
from providers.local.errors import LocalProcessError

if TYPE_CHECKING:
    from mlcloud.records import JobRecord
    from mlcloud.store import Store

MAX_SHUTDOWN_BYTES = 16 << 20  # more than this is left in the job's log, not moved

# The state store (and psutil) are imported on first use, after the first attempt has started:
# the user's first line should not wait ~70 ms for imports the launch itself does not need.

LAUNCHED_FILE = "launched.jsonl"


class StepSpec(TypedDict):
    argv: list[str]
    env: dict[str, str]  # set on top of the supervisor's environment
    env_from: dict[str, str]  # variable -> the supervisor's variable it is copied from (secrets)
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
    backoff: list[float]  # [first, cap]: seconds between attempts, doubling up to cap
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
    def __init__(self, spec: SupervisorSpec, lock_fd: int | None = None) -> None:
        self.spec = spec
        self.lock_fd = lock_fd  # the job's lock (jobs.LOCK_FILE), held until this process ends
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

            self._store = Store.at(self.spec["state_db"])
        return self._store

    def record(self, state: str | None = None, **fields: Any) -> JobRecord:
        """Update this job in the store; ``state`` is a JobState name. A finished job has no
        process left: the rendezvous store is stopped before the end is recorded."""
        from mlcloud.records import JobState

        if state and JobState(state).terminal:
            self._stop_rdzv()
            fields = self._with_metrics(fields)
        return self.store.update_job(
            self.job_id, state=JobState(state) if state else None, **fields
        )

    def _with_metrics(self, fields: dict[str, Any]) -> dict[str, Any]:
        """``fields`` plus what the job logged (runtime.log_metrics → metrics.json), recorded
        in the same update as the end: whoever sees the job finished sees its metrics."""
        from providers.common import metrics

        collected = metrics.gather_dir(self.spec["steps"][0]["env"].get("MLCLOUD_OUTPUT_DIR"))
        outputs = {**(fields.get("merge_outputs") or {}), **collected.outputs}
        details = {**(fields.get("merge_details") or {}), **collected.details}
        return {**fields, "merge_outputs": outputs or None, "merge_details": details or None}

    def log(self, out: BinaryIO, text: str) -> None:
        out.write(f"[mlcloud] {text}\n".encode())
        out.flush()

    def run(self) -> None:
        with sensitive.open_append(self.spec["log"]) as out:
            try:
                self._run(out)
            except Exception as e:  # record, never lose the job's end
                self.log(out, f"supervisor error: {e}")
                self._stop_everything(grace=2.0)  # first: a finished job has no process left
                try:
                    self.record("FAILED", message=str(e))
                except Exception as again:  # the store itself failed: the log says it all
                    self.log(out, f"could not record the failure: {again}")
            finally:
                self._stop_everything(grace=2.0)
                if self._store is not None:
                    self._store.close()

    def _run(self, out: BinaryIO) -> None:
        if self.spec["rdzv"]:
            self._start_rdzv_store(out, self.spec["rdzv"])
        attempts = int(self.spec["restarts"]) + 1
        for attempt in range(1, attempts + 1):
            if self.cancel.is_set():
                break
            self.log(out, self._attempt_line(attempt, attempts))
            rc = self._run_attempt(out, attempt)
            if self.cancel.is_set():
                break
            if rc == 0:
                self.log(out, "job succeeded")
                model = self._collect_model(out)
                self.record("SUCCEEDED", exit_code=0, message="succeeded", merge_outputs=model)
                return
            if attempt < attempts:
                self._back_off(out, attempt, rc)
                continue
            self.log(out, f"job failed with exit code {rc}")
            self.record(
                "FAILED", exit_code=rc, message=f"exited with code {rc} after {attempt} attempt(s)"
            )
            return
        self._cancel(out)

    def _attempt_line(self, attempt: int, attempts: int) -> str:
        """``attempt 2/4 started``; a distributed job is restarted by torchrun, not by us, so
        its line says so instead of a misleading ``attempt 1/1`` (max_restarts: 3)."""
        by_torchrun = [
            int(arg.partition("=")[2])
            for step in self.spec["steps"]
            for arg in step["argv"]
            if arg.startswith("--max-restarts=") and arg.partition("=")[2].isdigit()
        ]
        if attempts == 1 and by_torchrun and by_torchrun[0] > 0:
            return f"job started (torchrun restarts its workers up to {by_torchrun[0]} time(s))"
        return f"attempt {attempt}/{attempts} started"

    def _back_off(self, out: BinaryIO, attempt: int, rc: int) -> None:
        """Wait before the next attempt: ``first`` seconds doubling per attempt up to ``cap``, so
        a job that fails at once does not spin; cancel and max_runtime still apply."""
        first, cap = self.spec["backoff"]
        delay = min(cap, first * 2 ** (attempt - 1))
        said = f"attempt {attempt} failed with exit code {rc}; next attempt in {delay:g} s"
        self.log(out, said)
        self.record("RESTARTING", exit_code=rc, event=said)
        if self.cancel.wait(max(0.0, min(delay, self.deadline - time.monotonic()))):
            return
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"exceeded max_runtime ({self.spec['max_runtime']} s)")

    def _collect_model(self, out: BinaryIO) -> dict[str, str]:
        """The model's digest, recorded as the job ends: a deploy trusts the model's code only
        if it still matches (``modeldir.collect`` first turns a scikit-learn pickle into skops
        where it can)."""
        from mlcloud import modeldir

        model_dir = self.spec["steps"][0]["env"].get("MLCLOUD_MODEL_DIR")
        outputs = modeldir.collect(Path(model_dir)) if model_dir else {}
        if "model_converted" in outputs:
            self.log(out, "model saved as skops (converted from a joblib pickle)")
        return outputs

    def _run_attempt(self, out: BinaryIO, attempt: int) -> int:
        self.children = []
        for step in self.spec["steps"]:
            self.children.append(
                subprocess.Popen(
                    step["argv"],
                    env=sensitive.process_env(os.environ, step["env"], step.get("env_from") or {}),
                    cwd=step["cwd"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent(),
                )
            )
        self._record_launched(attempt)
        from providers.local import procs

        now = self.record(
            "RUNNING",
            attempts=attempt,
            exit_code=None,  # the previous attempt's is in its RESTARTING event
            event=f"attempt {attempt} started",
            # Ours too: a submitter killed right after starting us could not record it.
            merge_details={
                "pids": [c.pid for c in self.children],
                "supervisor": procs.identity(os.getpid()),
            },
        )
        if now.state.terminal:  # ended before we started it (a cancel): do not run it
            self.log(out, f"the job was already {now.state}: stopping it")
            self.cancel.set()
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
            seen["env"] = sensitive.redact_env(
                {k: v for k, v in environ.items() if k in step["env"] or os.environ.get(k) != v},
                secret=step.get("env_from") or {},
            )
            lines.append(json.dumps(seen) + "\n")
        with sensitive.open_append(self.spec["launched"]) as f:
            f.write("".join(lines).encode())

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
        start = os.fstat(out.fileno()).st_size  # what the processes print from here on
        self._stop_children(grace=float(self.spec["grace"]))
        self.record("CANCELLED", message="cancelled")
        moved = self._set_aside_shutdown_output(out, start)
        self.log(out, "job cancelled" + moved)

    def _set_aside_shutdown_output(self, out: BinaryIO, start: int) -> str:
        """Move what the processes printed while being stopped (torchrun's SignalException
        tracebacks, ~100 lines for a DDP job) out of the job's log into ``shutdown.log``, so a
        cancelled job's log ends cleanly; returns the note saying where it went."""
        out.flush()
        try:
            if os.fstat(out.fileno()).st_size - start > MAX_SHUTDOWN_BYTES:
                return ""  # too much to be shutdown noise alone: keep it where it is
            with open(self.spec["log"], "rb") as fh:
                fh.seek(start)
                noise = fh.read()
            if not noise.strip():
                return ""
            aside = Path(self.spec["log"]).with_name("shutdown.log")
            with sensitive.open_append(str(aside)) as fh:
                fh.write(noise)
            os.ftruncate(out.fileno(), start)  # everyone that wrote there is stopped
        except OSError as e:  # the log stays as it is: noisy, but complete
            return f" (its shutdown output stays above: {e})"
        lines = noise.count(b"\n") or 1
        return f" ({lines} line(s) the processes printed while stopping are in {aside})"

    def _start_rdzv_store(self, out: BinaryIO, rdzv: RdzvSpec) -> None:
        host, port = rdzv["host"], int(rdzv["port"])
        from mlcloud.runtime import ENV_JOB_ID

        self.rdzv = subprocess.Popen(
            [sys.executable, "-m", "providers.local.rdzv_store", host, str(port)],
            env={**os.environ, ENV_JOB_ID: self.job_id},  # found by procs.job_processes
            preexec_fn=die_with_parent(),
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
        self._stop_rdzv()

    def _stop_rdzv(self) -> None:
        if self.rdzv is not None and self.rdzv.poll() is None:
            self.rdzv.terminate()
            try:
                self.rdzv.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.rdzv.kill()
                self.rdzv.wait()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when this process dies
    (Linux; elsewhere ``None``): a supervisor killed with SIGKILL leaves no job process running
    unsupervised, past its max_runtime. SIGTERM, not SIGKILL, so that torchrun stops its workers
    and the runtime saves a last checkpoint. What survives is stopped by the next look at the
    job (``jobs.status``)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # died before the call above: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def spawn(
    spec_path: Path,
    log_path: Path,
    python: str | None = None,
    env: dict[str, str] | None = None,
    lock_fd: int | None = None,
) -> int:
    """Start the detached supervisor of one job in its own session; returns its pid. It
    inherits ``lock_fd`` (the job's lock, see ``procs.take_lock``) and holds it while it lives.

    From a single-threaded caller (the CLI) on POSIX it is a double fork of the caller, which
    already has everything imported: the user's first line starts ~0.1 s sooner than with a fresh
    interpreter. A threaded caller (a notebook, a server), another interpreter, or a caller with
    a SQLite database still open (``sqlite_open``) gets ``python -m providers.local.supervisor``
    instead, since forking those is unsafe.
    """
    if python in (None, sys.executable) and hasattr(os, "fork") and threading.active_count() == 1:
        from mlcloud.store import Store

        Store.close_all()  # they reconnect on next use
        if not sqlite_open():
            return _fork(spec_path, log_path, env or {}, lock_fd)
    lock = ["--lock-fd", str(lock_fd)] if lock_fd is not None else []
    with sensitive.open_append(log_path) as out:
        return subprocess.Popen(
            [python or sys.executable, "-m", "providers.local.supervisor", str(spec_path), *lock],
            env={**os.environ, **(env or {})},  # ``env``: secrets kept out of the spec file
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI and its terminal
            close_fds=True,
            pass_fds=() if lock_fd is None else (lock_fd,),
        ).pid


def sqlite_open() -> bool:
    """Whether this process has a SQLite database open (a descriptor on a file that starts
    with SQLite's header): a connection the caller made itself, not through a ``Store`` that
    ``close_all`` closes. A forked child that opens the same database inherits SQLite's
    per-process lock and descriptor bookkeeping for it and closes or locks the wrong files
    (https://sqlite.org/howtocorrupt.html#fork), so such a caller is not forked. Where the
    descriptors cannot be listed, assume one is open."""
    folder = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
    if folder is None:
        return True
    for name in os.listdir(folder):
        with contextlib.suppress(OSError, ValueError):
            fd = int(name)
            if stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 16, 0) == _SQLITE_HEADER:
                return True
    return False


_SQLITE_HEADER = b"SQLite format 3\x00"


def _fork(spec_path: Path, log_path: Path, env: dict[str, str], lock_fd: int | None) -> int:
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
                os.environ.update(env)  # secrets kept out of the spec file
                _detached_main(spec_path, log_path, lock_fd)  # never returns
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


def _detached_main(spec_path: Path, log_path: Path, lock_fd: int | None) -> None:
    code = 1
    try:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Every other inherited descriptor goes too: a caller's saved stdout (pytest keeps one)
        # would otherwise keep whoever reads that pipe waiting until the job ends. The caller's
        # SQLite connections were closed before the fork, and its objects are never finalized
        # here: its frames never unwind (os._exit) and the cyclic GC must not collect them.
        # The job's lock is the one kept, as descriptor 3.
        gc.freeze()
        if lock_fd is not None:
            lock_fd = os.dup2(lock_fd, 3, inheritable=False)
        os.closerange(3 if lock_fd is None else 4, os.sysconf("SC_OPEN_MAX"))
        if "logging" in sys.modules:  # handlers of the caller write to descriptors now closed
            sys.modules["logging"].root.handlers.clear()
        sys.stdout = sys.stderr = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        # As a fresh interpreter would have them (main() then sets SIGTERM/SIGINT/SIGHUP).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        main([sys.argv[0], str(spec_path), *([] if lock_fd is None else ["--lock-fd", "3"])])
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no atexit handlers, no finalizers of the caller's objects


def main(argv: list[str]) -> None:
    """``SPEC [--lock-fd N]``: N is the job's lock, inherited and held until this process ends."""
    spec: SupervisorSpec = json.loads(Path(argv[1]).read_text())
    lock_fd = int(argv[3]) if argv[2:3] == ["--lock-fd"] else None
    supervisor = Supervisor(spec, lock_fd)

    def on_signal(signum: int, frame: object) -> None:
        supervisor.cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    supervisor.run()


if __name__ == "__main__":
    main(sys.argv)
