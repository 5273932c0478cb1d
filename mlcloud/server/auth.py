"""Bearer tokens, roles and the per-token predict rate limit.

``require(role)`` is the one auth dependency of every route (``read`` < ``admin``)::

    @router.post("/x", dependencies=[Depends(require("admin"))])
    async def x(who: Identity = Depends(require("read", limit="predict"))): ...

Tokens are checked against the hashes in the store (``mlcloud.store.auth``), re-read at most
every ``Settings.token_cache_s`` so a revoked token stops working within that time. A server on
loopback with no token at all is open (one user's machine, like the local endpoint front); one
bound beyond loopback refuses to start without tokens (:func:`check_startup`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from mlcloud.errors import ConfigError
from mlcloud.server.settings import Settings, is_loopback
from mlcloud.store import Store
from mlcloud.store import auth as token_store

ROLE_RANK = {"read": 1, "admin": 2}
ANONYMOUS = "anonymous"  # who a failed authentication is recorded as
OPEN_LOOPBACK = "local"  # who acts on an open loopback server (no token exists)
MISS_REREAD_S = 0.1  # an unknown token re-reads the store at most this often


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


class AuthProblem(Exception):
    """An authentication / authorisation / rate refusal, rendered as problem JSON."""

    def __init__(
        self, status: int, kind: str, detail: str, hint: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(detail)
        self.status, self.kind, self.detail, self.hint = status, kind, detail, hint
        self.headers = headers or {}


_local = threading.local()


def thread_store() -> Store:
    """One store handle per worker thread (a SQLite connection is bound to its thread)."""
    store: Store | None = getattr(_local, "store", None)
    if store is None:
        store = _local.store = Store.open()
    return store


class TokenVerifier:
    """The active tokens' digests, re-read from the store at most every ``ttl`` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._active: list[tuple[str, str, str]] = []
        self._read_at = -1e18
        self._pending: asyncio.Future[list[tuple[str, str, str]]] | None = None

    def active(self, max_age: float | None = None) -> list[tuple[str, str, str]]:
        """Blocking (reads the store when the copy is older than ``max_age``, default the
        ttl): call it in a worker thread."""
        with self._lock:
            if time.monotonic() - self._read_at >= (self.ttl if max_age is None else max_age):
                self._active = token_store.active_digests(thread_store())
                self._read_at = time.monotonic()
            return self._active

    async def _reread(self, max_age: float | None) -> list[tuple[str, str, str]]:
        """``active`` in a worker thread, once for all the requests that find the copy stale
        at the same time (not one thread hop each)."""
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(run_in_threadpool(self.active, max_age))
            pending.add_done_callback(self._reread_done)
        return await asyncio.shield(pending)  # a caller that goes away cancels only itself

    def _reread_done(self, _: asyncio.Future[list[tuple[str, str, str]]]) -> None:
        self._pending = None

    async def identify(self, header: str | None, loopback: bool) -> Identity:
        fresh = time.monotonic() - self._read_at < self.ttl
        active = self._active if fresh else await self._reread(None)
        if not active and loopback:
            return Identity(OPEN_LOOPBACK, "admin")
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthProblem(
                401, "AuthError", "this server needs a bearer token",
                hint="set MLCLOUD_TOKEN (or MLCLOUD_TOKEN_FILE); an admin creates one with "
                "`mlcloud tokens create NAME --role read`",
                headers={"WWW-Authenticate": 'Bearer realm="mlcloud"'},
            )  # fmt: skip
        found = token_store.match(active, token.strip())
        if found is None and time.monotonic() - self._read_at >= MISS_REREAD_S:
            # a token created since the last read: look again (at most every MISS_REREAD_S)
            active = await self._reread(MISS_REREAD_S)
            found = token_store.match(active, token.strip())
        if found is None:
            raise AuthProblem(
                401, "AuthError", "the bearer token is unknown or revoked",
                hint="ask an admin for a new token (mlcloud tokens create NAME)",
                headers={"WWW-Authenticate": 'Bearer realm="mlcloud", error="invalid_token"'},
            )  # fmt: skip
        return Identity(*found)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` returns 0 or the seconds to wait."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.level, self.at = float(burst), time.monotonic()

    def take(self) -> float:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate if self.rate > 0 else 60.0


class RateLimiter:
    """One bucket per (limit, token name); one event loop per worker, so no lock is needed."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def check(self, limit: str, who: Identity) -> None:
        bucket = self._buckets.get((limit, who.name))
        if bucket is None:
            bucket = self._buckets[(limit, who.name)] = TokenBucket(self.rate, self.burst)
        wait = bucket.take()
        if wait > 0:
            raise AuthProblem(
                429, "Throttled",
                f"token {who.name!r} exceeded {self.rate:g} {limit} calls per second",
                hint="slow down, or ask an admin to raise --predict-rate",
                headers={"Retry-After": str(max(1, round(wait)))},
            )  # fmt: skip


def require(role: str, limit: str | None = None) -> Callable[[Request], Awaitable[Identity]]:
    """A dependency: the caller's identity, refused with 401 (no or bad token) or 403 (a
    ``read`` token on an ``admin`` route); with ``limit`` (e.g. ``"predict"``) the token's rate
    limit is taken too (429 with Retry-After)."""
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(request: Request) -> Identity:
        return await authorize(
            request.app.state, request.headers.get("authorization"), role, limit,
            request.scope.setdefault("state", {}),
        )  # fmt: skip

    return dependency


async def authorize(
    state: Any, header: str | None, role: str, limit: str | None, scope_state: dict[str, Any]
) -> Identity:
    """``require``'s check, for a route or the predict fast path: the caller's identity (its
    name recorded in the scope's state, what the access log names), else ``AuthProblem``."""
    verifier: TokenVerifier = state.verifier
    who = await verifier.identify(header, _loopback(state.settings.host))
    scope_state["actor"] = who.name
    demand(who, role)
    if limit is not None:
        state.limiter.check(limit, who)
    return who


@functools.lru_cache(maxsize=8)
def _loopback(host: str) -> bool:
    return is_loopback(host)  # parsing the address costs more than the rest of the check


def check_startup(settings: Settings, store: Store | None = None) -> None:
    """Refuse to serve beyond loopback without a token (ConfigError naming the fix)."""
    if settings.loopback:
        return
    if not token_store.has_tokens(store or Store.open()):
        raise ConfigError(
            f"refusing to listen on {settings.host} without a token: anyone who can reach it "
            "could run jobs and deploy models",
            hint="create one first: mlcloud tokens create admin --role admin "
            "(or bind --host 127.0.0.1)",
        )


# ---- the ``mlcloud tokens`` operations (the CLI reaches the store only through these) ----------
def create_token(name: str, role: str) -> str:
    """A new token (returned once, never stored in clear)."""
    import getpass

    return token_store.create_token(Store.open(), name, role, created_by=getpass.getuser())


def list_tokens() -> list[token_store.TokenInfo]:
    return token_store.list_tokens(Store.open())


def revoke_token(name: str) -> None:
    token_store.revoke_token(Store.open(), name)


def audit_log(limit: int = 100) -> list[dict[str, Any]]:
    return token_store.list_audit(Store.open(), limit)


def demand(who: Identity, role: str) -> None:
    """Inside a route: refuse (403) a token whose role is below ``role``."""
    if ROLE_RANK[who.role] < ROLE_RANK[role]:
        raise AuthProblem(
            403, "PermissionDenied", f"token {who.name!r} has role {who.role}; this needs {role}",
            hint="ask an admin for an admin token",
        )  # fmt: skip
