"""The team server's tokens and audit log in the state store (migration ``0003_server.sql``).

A token is 32 random bytes (``secrets.token_urlsafe``), shown once when created; the store keeps
only its SHA-256. A fast hash is right here, unlike for passwords: a 256-bit random secret cannot
be guessed however cheap each guess is, so a slow KDF (bcrypt, argon2) would add milliseconds to
every request and no safety. Verification compares digests with ``hmac.compare_digest`` against
every active token, so its time does not depend on where a guess first differs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlcloud.errors import NotFoundLocally, SpecError

if TYPE_CHECKING:
    from mlcloud.store import Store

ROLES = ("read", "admin")
PREFIX = "mlc_"  # makes a leaked token recognisable to secret scanners
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class TokenInfo:
    """What the store knows about a token: never the token itself."""

    name: str
    role: str
    created_at: float
    created_by: str | None
    revoked_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "revoked_at": self.revoked_at,
        }


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, name: str, role: str, created_by: str | None = None) -> str:
    """A new token named ``name``; returns the token (the only time it exists in clear).
    A revoked token's name may be reused; an active one's may not."""
    if not _NAME.match(name):
        raise SpecError(
            f"token name {name!r} is not allowed",
            hint="letters, digits and . _ @ -, at most 64 characters, e.g. ci-bot",
        )
    if role not in ROLES:
        raise SpecError(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = PREFIX + secrets.token_urlsafe(32)
    with store._tx() as db:
        row = db.execute("SELECT revoked_at FROM api_tokens WHERE name = ?", (name,)).fetchone()
        if row is not None and row["revoked_at"] is None:
            raise SpecError(
                f"a token named {name!r} exists",
                hint=f"revoke it first (mlcloud tokens revoke {name}) or choose another name",
            )
        if row is not None:
            db.execute("DELETE FROM api_tokens WHERE name = ?", (name,))
        db.execute(
            "INSERT INTO api_tokens (name, role, token_sha256, created_at, created_by) "
            "VALUES (?, ?, ?, ?, ?)",
            (name, role, digest(token), time.time(), created_by),
        )
    return token


def list_tokens(store: Store) -> list[TokenInfo]:
    rows = store._db.execute(
        "SELECT name, role, created_at, created_by, revoked_at FROM api_tokens ORDER BY name"
    ).fetchall()
    return [
        TokenInfo(r["name"], r["role"], r["created_at"], r["created_by"], r["revoked_at"])
        for r in rows
    ]


def revoke_token(store: Store, name: str) -> None:
    with store._tx() as db:
        row = db.execute("SELECT revoked_at FROM api_tokens WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundLocally(f"no token named {name!r}", hint="mlcloud tokens list")
        if row["revoked_at"] is None:
            db.execute("UPDATE api_tokens SET revoked_at = ? WHERE name = ?", (time.time(), name))


def active_digests(store: Store) -> list[tuple[str, str, str]]:
    """(name, role, sha256) of every token not revoked."""
    rows = store._db.execute(
        "SELECT name, role, token_sha256 FROM api_tokens WHERE revoked_at IS NULL"
    ).fetchall()
    return [(r["name"], r["role"], r["token_sha256"]) for r in rows]


def match(active: list[tuple[str, str, str]], token: str) -> tuple[str, str] | None:
    """(name, role) of the token among ``active``: every digest is compared in constant time,
    with no early exit."""
    wanted = digest(token)
    found = None
    for name, role, stored in active:
        if hmac.compare_digest(stored, wanted):
            found = (name, role)
    return found


def has_tokens(store: Store) -> bool:
    return bool(active_digests(store))


def record_audit(
    store: Store,
    actor: str,
    action: str,
    target: str | None,
    status: int,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit entry: who did what to which resource, when, and how it ended."""
    with store._tx() as db:
        db.execute(
            "INSERT INTO audit_log (at, actor, action, target, outcome, status, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), actor, action, target, outcome, status, json.dumps(detail or {})),
        )


def list_audit(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """The newest audit entries first."""
    rows = store._db.execute(
        "SELECT id, at, actor, action, target, outcome, status, detail FROM audit_log "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]
