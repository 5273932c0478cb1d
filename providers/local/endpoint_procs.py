"""Processes of local endpoints: start detached, probe, stop for certain.

Every process of an endpoint carries ``MLCLOUD_ENDPOINT_TAG`` (``<home>|<name>|<role>``) in its
environment. BentoML's arbiter starts each worker in a session of its own, so stopping the
arbiter's process group is not always enough: the tag finds the workers (and anything left by an
interrupted deploy) so that undeploy can promise the processes are gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

from mlcloud import sensitive
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
    *,
    inherit: bool = True,
) -> Ident:
    """Start ``argv`` in a new session with its output appended to ``log_path``; with ``env``
    on top of this process's environment (scrubbed), or ``env`` alone if not ``inherit``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # A model server needs no cloud credentials, API token or secret of the caller's shell.
    full_env = {**sensitive.scrubbed_environ(os.environ), **env} if inherit else dict(env)
    with sensitive.open_append(log_path) as log:  # 0600: a server's log may quote its input
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


def tagged(prefix: str, exact: bool = False) -> list[psutil.Process]:
    """Live processes whose ``MLCLOUD_ENDPOINT_TAG`` starts with ``prefix`` (is ``prefix``)."""
    if exact:
        return with_env(lambda env: env.get(ENV_TAG) == prefix)
    return with_env(lambda env: (env.get(ENV_TAG) or "").startswith(prefix))


def stop(
    idents: Sequence[Ident], tag_prefix: str | None, grace: float = 10.0, exact: bool = False
) -> int:
    """SIGTERM the processes (their groups), SIGKILL whatever outlives ``grace``; verify.

    ``tag_prefix`` also sweeps every process carrying that tag (exactly that tag if ``exact``).
    Returns how many survivors had to be SIGKILLed. Raises ``LocalProcessError`` if something
    still runs afterwards.
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
        procs.extend(tagged(tag_prefix, exact))
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
        left += tagged(tag_prefix, exact)
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


# ---- the endpoint's lock: deploys, undeploys and a front restart take it --------------------
@contextmanager
def locked(state_dir: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the endpoint's exclusive lock; yields False (not held) if it is busy and not
    ``wait``."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(state_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def deploy_running(state_dir: Path) -> bool:
    """Whether some process holds the endpoint's lock right now."""
    try:
        with open(state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except BlockingIOError:
        return True
    except OSError:
        return False
