"""Addresses, ports and the bearer token of local endpoints (the HTTP client is in
``clients.py``)."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import socket
import string
from pathlib import Path

from mlcloud.errors import ConfigError

SERVICE = "serving.service:MlcloudService"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_ENV = "MLCLOUD_API_TOKEN"  # noqa: S105 (a variable name, not a secret)
TOKEN_FILE = "api-token"  # noqa: S105 (a file name, not a secret)
TIMEOUT_ENV = "MLCLOUD_DEPLOY_TIMEOUT"
DRAIN_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 10 * 1024 * 1024
MIN_TOKEN_BITS = 128
_MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105


class TokenError(ConfigError):
    """The bearer token is missing, empty, malformed or too weak for the endpoint's bind."""


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
    """The bearer token: ``$MLCLOUD_API_TOKEN``, else ``$MLCLOUD_HOME/api-token`` (mode 0600),
    generated (256 random bits) if ``create`` and there is none. An empty file is a
    ``TokenError`` that says what to do, not a token."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    path = home / TOKEN_FILE
    try:
        return _read_token_file(path)
    except FileNotFoundError:
        if not create:
            return None
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another deploy created it first
        return _read_token_file(path)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the API token file {path}: {exc}") from None
    if not token:
        raise TokenError(
            f"the API token file {path} is empty",
            hint=f"delete it and mlcloud generates a token, or write one: {_MAKE_TOKEN} > {path}",
        )
    return token


_ALPHABETS = [
    frozenset(string.digits),
    frozenset("0123456789abcdef"),
    frozenset("0123456789ABCDEF"),
    frozenset(string.ascii_lowercase),
    frozenset(string.ascii_uppercase),
    frozenset(string.ascii_lowercase + string.digits),
    frozenset(string.ascii_uppercase + string.digits),
    frozenset(string.ascii_letters + string.digits),
    frozenset(string.ascii_letters + string.digits + "-_"),
]


def token_bits(token: str) -> float:
    """An estimate of a token's entropy in bits: its length times log2 of the smallest usual
    alphabet holding all its characters (digits, hex, letters and digits, base64url, printable
    ASCII). A patterned token (``abab…``, fewer than half the distinct characters a random one
    of that length would have) is worth nothing."""
    if not token:
        return 0.0
    chars = set(token)
    # the smallest usual alphabet holding every character: a random base64url token without
    # a '-' or '_' (half of them) or without a digit is still a base64url token (no 52-letter
    # alphabet for the same reason)
    alphabet = next((len(a) for a in _ALPHABETS if chars <= a), 95)
    expected_distinct = alphabet * (1 - (1 - 1 / alphabet) ** len(token))
    if len(chars) < expected_distinct / 2:
        return 0.0
    return len(token) * math.log2(alphabet)


def check_token(token: str | None, host: str) -> None:
    """Refuse a token that cannot protect an endpoint bound to ``host`` (beyond loopback):
    missing, with whitespace or non-ASCII characters, or under ``MIN_TOKEN_BITS`` bits."""
    if not needs_token(host):
        return
    where = f"an endpoint bound to {host} (beyond loopback)"
    hint = (
        f"unset {TOKEN_ENV} to use the generated $MLCLOUD_HOME/{TOKEN_FILE}, "
        f"or set it to a random token: {_MAKE_TOKEN}"
    )
    if not token:
        raise TokenError(f"{where} needs an API token", hint=hint)
    if any(c not in string.printable or c.isspace() for c in token):
        raise TokenError(
            "the API token must be printable ASCII without spaces (it goes in an HTTP header)",
            hint=hint,
        )
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        raise TokenError(
            f"the API token is too weak for {where}: about {bits:.0f} bits of entropy, "
            f"at least {MIN_TOKEN_BITS} needed (e.g. 22 random base64url or 32 hex characters)",
            hint=hint,
        )


def token_fingerprint(token: str | None) -> str | None:
    """Enough of the token's hash to tell whether a restarted front gets the deploy's token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16] if token else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_bentoml() -> bool:
    import importlib.util

    return importlib.util.find_spec("bentoml") is not None
