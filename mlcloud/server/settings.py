"""The server's settings: from ``mlcloud server``'s flags, passed to every worker through the
environment (uvicorn starts each worker from an import string, so the environment is the one
channel that reaches them all)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields

from mlcloud.errors import ConfigError

_ENV = "MLCLOUD_SERVER_"  # MLCLOUD_SERVER_HOST, MLCLOUD_SERVER_PORT, ...


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # None: the store MLCLOUD_HOME / MLCLOUD_DATABASE_URL names; never in a repr (a password)
    database_url: str | None = field(default=None, repr=False)
    #: predict calls per second per token (token bucket refill) and the bucket's size
    predict_rate: float = 50.0
    predict_burst: int = 100
    #: seconds a token list read from the store is reused (revocation takes effect within it)
    token_cache_s: float = 1.0
    #: seconds in-flight requests get to finish on shutdown (SIGTERM / Ctrl-C)
    graceful_timeout_s: float = 30.0
    log_level: str = "info"

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def to_env(self) -> dict[str, str]:
        return {
            _ENV + f.name.upper(): str(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(_ENV + f.name.upper())
            if raw is None:
                continue
            kind = {int: int, float: float}.get(type(getattr(cls(), f.name)), str)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigError(
                    f"{_ENV}{f.name.upper()}={raw!r} is not a {kind.__name__}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface
