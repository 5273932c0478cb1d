"""Processes of local endpoints: start detached, probe, stop for certain.

Every process of an endpoint carries ``MLCLOUD_ENDPOINT_TAG`` (``<home>|<name>|<role>``) in its
environment. BentoML's arbiter starts each worker in a session of its own, so stopping the
arbiter's process group is not always enough: the tag finds the workers (and anything left by an
interrupted deploy) so that undeploy can promise the processes are gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from providers.local.errors import LocalProcessError
from providers.local.procs import ProcessId, identity, with_env
from providers.local.procs import alive as alive  # one liveness check for jobs and endpoints

ENV_TAG = "MLCLOUD_ENDPOINT_TAG"


class Ident(ProcessId):
    """A started process as the endpoint record keeps it (with its log)."""

    log: str


def tag(home: Path, name: str, role: str = "") -> str:
    return f"{home}|{name}|{role}"


def home_tag(home: Path) -> str:
    """The tag prefix of every endpoint process of one ``$MLCLOUD_HOME``."""
    return f"{home}|"


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    log_path: Path,
    stdin_data: str | None = None,
) -> Ident:
    """Start ``argv`` in a new session with its output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI; its own group to signal
            close_fds=True,
        )
    if stdin_data is not None and proc.stdin is not None:
        proc.stdin.write(stdin_data.encode() + b"\n")
        proc.stdin.close()
    return {**identity(proc.pid), "log": str(log_path)}


def reap(ident: Ident) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError, KeyError, ValueError):
        os.waitpid(int(ident["pid"]), os.WNOHANG)


def workers(ident: Ident) -> set[int]:
    """Live BentoML worker processes under a ``bentoml serve`` arbiter."""
    try:
        children = psutil.Process(int(ident["pid"])).children(recursive=True)
    except (psutil.Error, KeyError, TypeError, ValueError):
        return set()
    found = set()
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(
                child.cmdline()
            ):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def tagged(prefix: str) -> list[psutil.Process]:
    """Live processes whose ``MLCLOUD_ENDPOINT_TAG`` starts with ``prefix``."""
    return with_env(lambda env: (env.get(ENV_TAG) or "").startswith(prefix))


def stop(idents: Sequence[Ident], tag_prefix: str | None, grace: float = 10.0) -> int:
    """SIGTERM the processes (their groups), SIGKILL whatever outlives ``grace``; verify.

    ``tag_prefix`` also sweeps every process carrying that tag. Returns how many survivors had to
    be SIGKILLed. Raises ``LocalProcessError`` if something still runs afterwards.
    """
    procs: list[psutil.Process] = []
    for ident in idents:
        if not alive(ident):
            reap(ident)
            continue
        try:
            proc = psutil.Process(int(ident["pid"]))
            procs.extend([proc, *proc.children(recursive=True)])
        except psutil.Error:
            continue
        _killpg(int(ident["pid"]), signal.SIGTERM)
    if tag_prefix:
        procs.extend(tagged(tag_prefix))
    unique = {p.pid: p for p in procs}.values()
    for proc in unique:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    deadline = time.monotonic() + grace
    survivors = list(unique)
    while survivors and time.monotonic() < deadline:
        for ident in idents:
            reap(ident)
        survivors = [p for p in survivors if _running(p)]
        time.sleep(0.05)
    for proc in survivors:
        _killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(survivors, timeout=5)
    for ident in idents:
        reap(ident)
    left = [p for p in unique if _running(p)]
    if tag_prefix:
        left += tagged(tag_prefix)
    if left:
        raise LocalProcessError(
            f"processes still running after SIGKILL: {[p.pid for p in left]}", code="StopFailed"
        )
    return len(survivors)


def _running(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _killpg(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:  # only a group this process leads (start_new_session)
            os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def log_tail(path: str | Path | None, lines: int = 30) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
