"""Addresses, ports and the bearer token of local endpoints (the HTTP client is in
``clients.py``)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

SERVICE = "serving.service:MlcloudService"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_ENV = "MLCLOUD_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
TOKEN_FILE = "api-token"  # noqa: S105 (a file name, not a secret)
TIMEOUT_ENV = "MLCLOUD_DEPLOY_TIMEOUT"
DRAIN_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 10 * 1024 * 1024


def needs_token(host: str) -> bool:
    """Anything but the loopback address we default to is exposure and needs a token."""
    return host not in LOOPBACK


def connect_host(host: str) -> str:
    """Where this machine reaches a front bound to ``host`` (a wildcard is reached on loopback)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 (not a bind)
    return wildcard.get(host, host)


def http_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def api_token(home: Path, create: bool) -> str | None:
    """The bearer token: ``$MLCLOUD_API_TOKEN``, else ``$MLCLOUD_HOME/api-token`` (mode 0600)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    path = home / TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another deploy created it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_bentoml() -> bool:
    import importlib.util

    return importlib.util.find_spec("bentoml") is not None
