"""A real ``mlcloud server`` (uvicorn) in a subprocess on 127.0.0.1, for the server tests.

srv = start_server(home)           # MLCLOUD_HOME=home; its log in home/server.log
httpx.get(srv.url + "/healthz")
srv.stop()                         # SIGTERM: graceful; returns the exit status
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import MLCLOUD, REPO, cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    proc: subprocess.Popen[bytes]
    home: Path
    log: Path

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0)


def start_server(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> RunningServer:
    """Start ``mlcloud server`` on a free loopback port and wait until /healthz answers."""
    port = free_port()
    log = home / f"server-{port}.log"
    environ = cli_env(MLCLOUD_HOME=str(home), **(env or {}))
    for var in ("MLCLOUD_SERVER", "MLCLOUD_TOKEN", "MLCLOUD_TOKEN_FILE"):
        environ.pop(var, None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*MLCLOUD, "server", "--host", "127.0.0.1", "--port", str(port), *args],
            env=environ, stdout=out, stderr=subprocess.STDOUT, cwd=home,
            start_new_session=True,
        )  # fmt: skip
    server = RunningServer(f"http://127.0.0.1:{port}", proc, home, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited {proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server did not answer in {timeout}s:\n{server.log_text()}")


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI with MLCLOUD_HOME=home (and ``env``), its output captured."""
    environ = cli_env(MLCLOUD_HOME=str(home), **env)
    if "MLCLOUD_SERVER" not in env:
        for var in ("MLCLOUD_SERVER", "MLCLOUD_TOKEN", "MLCLOUD_TOKEN_FILE"):
            environ.pop(var, None)
    return subprocess.run(
        [*MLCLOUD, *args], env=environ, capture_output=True, text=True, timeout=120,
        cwd=REPO,
    )  # fmt: skip


def token(home: Path, name: str, role: str) -> str:
    """A new token made by the real ``mlcloud tokens create``."""
    done = cli(home, "tokens", "create", name, "--role", role)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def same_output(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """Output with what legitimately differs between two runs seconds apart made equal (an
    age, with the padding its width changes: "9s ago" / "10s ago")."""
    ago = re.compile(r" *\b\d+[smhd] ago\b *")
    return done.returncode, ago.sub(" <ago> ", done.stdout), ago.sub(" <ago> ", done.stderr)


def both(home: Path, server: RunningServer, admin: str, *args: str) -> tuple[int, str, str]:
    """Run ``mlcloud ARGS`` locally and against ``server``; assert the same output
    (``same_output``); return it."""
    local = cli(home, *args)
    answered = cli(home, *args, MLCLOUD_SERVER=server.url, MLCLOUD_TOKEN=admin)
    assert same_output(answered) == same_output(local), args
    return same_output(local)
