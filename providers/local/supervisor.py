"""The detached supervisor of one local job: ``python -m providers.local.supervisor SPEC``.

Started by ``submit_job`` in its own session so the job survives the CLI. It runs the planned
commands, restarts plain commands up to ``max_restarts`` times, records every attempt, state and
exit code in the store, turns SIGTERM (``mlcloud cancel``) into SIGTERM → grace → SIGKILL for
every process of the job, and never leaves an orphan: processes are found by their
``MLCLOUD_JOB_ID`` even after leaving the process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from mlcloud.provider import JobState
from mlcloud.store import Store
from providers.local import procs


class Supervisor:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.job_id: str = spec["job_id"]
        self.store = Store(Path(spec["state_db"]))
        self.cancel = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []
        self.rdzv: subprocess.Popen[bytes] | None = None
        self.deadline = time.monotonic() + float(spec["max_runtime"])

    def log(self, out: BinaryIO, text: str) -> None:
        out.write(f"[mlcloud] {text}\n".encode())
        out.flush()

    def run(self) -> None:
        with open(self.spec["log"], "ab", buffering=0) as out:
            try:
                self._run(out)
            except Exception as e:  # record, never lose the job's end
                self.log(out, f"supervisor error: {e}")
                self.store.update_job(self.job_id, state=JobState.FAILED, message=str(e))
            finally:
                self._stop_everything(grace=2.0)

    def _run(self, out: BinaryIO) -> None:
        if self.spec.get("rdzv"):
            self._start_rdzv_store(out)
        attempts = int(self.spec["restarts"]) + 1
        for attempt in range(1, attempts + 1):
            if self.cancel.is_set():
                break
            self.log(out, f"attempt {attempt}/{attempts} started")
            self.store.update_job(
                self.job_id,
                state=JobState.RUNNING,
                attempts=attempt,
                event=f"attempt {attempt} started",
            )
            rc = self._run_attempt(out)
            if self.cancel.is_set():
                break
            if rc == 0:
                self.log(out, "job succeeded")
                self.store.update_job(
                    self.job_id, state=JobState.SUCCEEDED, exit_code=0, message="succeeded"
                )
                return
            if attempt < attempts:
                self.log(out, f"attempt {attempt} failed with exit code {rc}; restarting")
                self.store.update_job(
                    self.job_id,
                    state=JobState.RESTARTING,
                    exit_code=rc,
                    event=f"attempt {attempt} failed with exit code {rc}",
                )
                continue
            self.log(out, f"job failed with exit code {rc}")
            self.store.update_job(
                self.job_id,
                state=JobState.FAILED,
                exit_code=rc,
                message=f"exited with code {rc} after {attempt} attempt(s)",
            )
            return
        self._cancel(out)

    def _run_attempt(self, out: BinaryIO) -> int:
        env_base = dict(os.environ)
        env_base["MLCLOUD_STATE_DB"] = self.spec["state_db"]
        if self.spec.get("rdzv"):
            # Workers' store: made by rank 0 in runtime.init_distributed, bound to loopback.
            env_base["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        self.children = []
        for step in self.spec["steps"]:
            self.children.append(
                subprocess.Popen(
                    step["argv"],
                    env={**env_base, **step["env"]},
                    cwd=step["cwd"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        self.store.update_job(self.job_id, merge_details={"pids": [c.pid for c in self.children]})
        return self._wait()

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
        self.store.update_job(self.job_id, state=JobState.CANCELLED, message="cancelled")
        self.log(out, "job cancelled")

    def _start_rdzv_store(self, out: BinaryIO) -> None:
        host, port = self.spec["rdzv"]["host"], int(self.spec["rdzv"]["port"])
        self.rdzv = subprocess.Popen(
            [sys.executable, "-m", "providers.local.rdzv_store", host, str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.rdzv.poll() is not None:
                raise RuntimeError(f"the rendezvous store on {host}:{port} failed to start")
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the rendezvous store on {host}:{port} did not start in 60 s")

    def _stop_everything(self, grace: float) -> None:
        if self.children:
            self._stop_children(grace=grace)
        else:
            procs.kill_job_processes(self.job_id, grace=grace)
        if self.rdzv is not None and self.rdzv.poll() is None:
            self.rdzv.terminate()
            try:
                self.rdzv.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.rdzv.kill()
        self.store.close()


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main(argv: list[str]) -> None:
    spec = json.loads(Path(argv[1]).read_text())
    supervisor = Supervisor(spec)

    def on_signal(signum: int, frame: object) -> None:
        supervisor.cancel.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    supervisor.run()


if __name__ == "__main__":
    main(sys.argv)
