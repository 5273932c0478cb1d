"""The model registry's queries (tables of ``sql/0002_registry.sql``): versions, aliases, the
append-only alias history and the endpoints following an alias.

Every read-modify-write (a version number, an alias move, a rollback's target) reads inside the
one write transaction that applies it (``BEGIN IMMEDIATE``), so concurrent processes serialise
and no move is lost. The history is only ever inserted into.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFoundLocally, SpecError
from mlcloud.records import AliasMove, EndpointRecord, EndpointState, ModelVersionRecord

if TYPE_CHECKING:
    from mlcloud.store import Connection, Store

REGISTRY = "mlcloud-registry"  # the "backend" a registry Conflict names
_VERSION_COLUMNS = (
    "name", "version", "uri", "sha256", "framework", "source_job", "provider", "created_by",
    "created_at", "details",
)  # fmt: skip
MOVE, ROLLBACK, NOTE = "move", "rollback", "note"


def _version(row: Any) -> ModelVersionRecord:
    data = {k: row[k] for k in _VERSION_COLUMNS}
    data["details"] = json.loads(data["details"])
    return ModelVersionRecord(**data)


def _move(row: Any) -> AliasMove:
    return AliasMove(
        seq=row["seq"], name=row["name"], alias=row["alias"], from_version=row["from_version"],
        to_version=row["to_version"], at=row["at"], by=row["actor"], reason=row["reason"],
    )  # fmt: skip


# ---- versions ----------------------------------------------------------------------------------
def add_version(store: Store, version: ModelVersionRecord) -> ModelVersionRecord:
    """Insert ``version`` under the next number of its model (never a number used before)."""
    now = time.time()
    with store._tx() as db:
        db.execute(
            "INSERT INTO registered_models (name, last_version, versions, created_at, updated_at) "
            "VALUES (?, 0, 0, ?, ?) ON CONFLICT (name) DO NOTHING",
            (version.name, now, now),
        )
        (number,) = db.execute(
            "UPDATE registered_models SET last_version = last_version + 1, "
            "versions = versions + 1, updated_at = ? WHERE name = ? RETURNING last_version",
            (now, version.name),
        ).fetchone()
        version.version, version.created_at = int(number), now
        db.execute(
            "INSERT INTO model_versions (name, version, uri, sha256, framework, source_job, "
            "provider, created_by, created_at, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (version.name, version.version, version.uri, version.sha256, version.framework,
             version.source_job, version.provider, version.created_by, now,
             json.dumps(version.details, sort_keys=True)),
        )  # fmt: skip
    return version


def set_details(store: Store, name: str, version: int, details: dict[str, Any]) -> None:
    with store._tx() as db:
        db.execute(
            "UPDATE model_versions SET details = ? WHERE name = ? AND version = ?",
            (json.dumps(details, sort_keys=True), name, version),
        )


def get_version(store: Store, name: str, version: int) -> ModelVersionRecord:
    row = store._db.execute(
        "SELECT * FROM model_versions WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    if row is None:
        known = versions_of(store, name)  # NotFoundLocally for an unknown model
        numbers = ", ".join(str(v.version) for v in known[-10:]) or "none left"
        raise NotFoundLocally(
            f"model {name} has no version {version}", hint=f"its versions: {numbers}"
        )
    return _version(row)


def versions_of(store: Store, name: str) -> list[ModelVersionRecord]:
    """The versions of model ``name``, oldest first (NotFoundLocally for an unknown name)."""
    rows = store._db.execute(
        "SELECT * FROM model_versions WHERE name = ? ORDER BY version", (name,)
    ).fetchall()
    if not rows and not _known(store, name):
        raise NotFoundLocally(
            f"no registered model named {name!r}", hint="mlcloud models list shows them"
        )
    return [_version(r) for r in rows]


def _known(store: Store, name: str) -> bool:
    row = store._db.execute("SELECT 1 FROM registered_models WHERE name = ?", (name,))
    return row.fetchone() is not None


def with_digest(store: Store, sha256: str) -> list[ModelVersionRecord]:
    rows = store._db.execute("SELECT * FROM model_versions WHERE sha256 = ?", (sha256,))
    return [_version(r) for r in rows.fetchall()]


def with_uri(store: Store, uri: str) -> list[ModelVersionRecord]:
    rows = store._db.execute("SELECT * FROM model_versions WHERE uri = ?", (uri,))
    return [_version(r) for r in rows.fetchall()]


def summaries(store: Store) -> list[dict[str, Any]]:
    """One line per model: number of versions, the latest, its aliases."""
    rows = store._db.execute("SELECT * FROM registered_models ORDER BY name").fetchall()
    latest = {  # over the primary key's index alone
        r["name"]: r["latest"]
        for r in store._db.execute(
            "SELECT name, MAX(version) AS latest FROM model_versions GROUP BY name"
        )
    }
    aliases: dict[str, dict[str, int]] = {}
    for row in store._db.execute("SELECT name, alias, version FROM model_aliases"):
        aliases.setdefault(row["name"], {})[row["alias"]] = row["version"]
    return [
        {"name": r["name"], "versions": r["versions"], "latest": latest.get(r["name"]),
         "aliases": dict(sorted(aliases.get(r["name"], {}).items())),
         "created_at": r["created_at"], "updated_at": r["updated_at"]}
        for r in rows
    ]  # fmt: skip


def delete_version(store: Store, name: str, version: int) -> None:
    """Remove one version; refused while an alias points at it or an endpoint serves it (both
    checked in the same write)."""
    with store._tx() as db:
        record = get_version(store, name, version)
        held = [
            "@" + r["alias"]
            for r in db.execute(
                "SELECT alias FROM model_aliases WHERE name = ? AND version = ?", (name, version)
            )
        ]
        used = [f"endpoint {e.name} ({e.provider})" for e in serving(store, record)]
        if held or used:
            users = [f"{name}{a}" for a in held] + used
            hint = (
                f"move the alias first: mlcloud models alias {name} {held[0][1:]} VERSION"
                if held
                else "undeploy the endpoint or deploy another version to it first"
            )
            raise Conflict(
                f"{name}:{version} is used by {', '.join(users)}: refusing to delete it",
                provider_type=REGISTRY,
                hint=hint,
            )
        db.execute("DELETE FROM model_versions WHERE name = ? AND version = ?", (name, version))
        db.execute(
            "UPDATE registered_models SET versions = versions - 1, updated_at = ? WHERE name = ?",
            (time.time(), name),
        )


# ---- aliases -----------------------------------------------------------------------------------
def aliases_of(store: Store, name: str) -> dict[str, int]:
    rows = store._db.execute(
        "SELECT alias, version FROM model_aliases WHERE name = ? ORDER BY alias", (name,)
    )
    return {r["alias"]: r["version"] for r in rows.fetchall()}


def alias_version(store: Store, name: str, alias: str) -> int:
    row = store._db.execute(
        "SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)
    ).fetchone()
    if row is None:
        versions_of(store, name)  # an unknown model says so first
        known = ", ".join("@" + a for a in aliases_of(store, name)) or "none"
        raise NotFoundLocally(
            f"model {name} has no alias {alias!r}",
            hint=f"its aliases: {known}; set one: mlcloud models alias {name} {alias} VERSION",
        )
    return int(row["version"])


def _append(
    db: Connection, name: str, alias: str, moved: tuple[int | None, int | None],
    actor: str, reason: str | None, kind: str,
) -> AliasMove:  # fmt: skip
    row = db.execute(
        "INSERT INTO alias_history (name, alias, from_version, to_version, at, actor, reason, "
        "kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (name, alias, moved[0], moved[1], time.time(), actor, reason, kind),
    ).fetchone()
    return _move(row)


def move_alias(
    store: Store, name: str, alias: str, version: int, *, actor: str,
    reason: str | None = None, expect: int | None = None, kind: str = MOVE,
) -> AliasMove:  # fmt: skip
    """Point ``name@alias`` at ``version`` and append the move. ``expect``: move only if the
    alias points at that version now (Conflict otherwise): compare-and-set for scripts."""
    with store._tx() as db:
        return _move_in(db, name, alias, version, actor, reason, expect, kind)


def _move_in(
    db: Connection, name: str, alias: str, version: int, actor: str,
    reason: str | None, expect: int | None, kind: str,
) -> AliasMove:  # fmt: skip
    exists = db.execute(
        "SELECT 1 FROM model_versions WHERE name = ? AND version = ?", (name, version)
    ).fetchone()
    if exists is None:
        raise NotFoundLocally(
            f"model {name} has no version {version}", hint=f"mlcloud models show {name}"
        )
    row = db.execute(
        "SELECT version FROM model_aliases WHERE name = ? AND alias = ?", (name, alias)
    ).fetchone()
    current = None if row is None else int(row["version"])
    if expect is not None and current != expect:
        raise Conflict(
            f"{name}@{alias} points at {current}, not {expect}: another move came first",
            provider_type=REGISTRY,
            hint=f"mlcloud models history {name} shows it",
        )
    db.execute(
        "INSERT INTO model_aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, "
        "updated_at = excluded.updated_at",
        (name, alias, version, time.time()),
    )
    return _append(db, name, alias, (current, version), actor, reason, kind)


def rollback(store: Store, name: str, alias: str, *, actor: str, reason: str | None) -> AliasMove:
    """Move ``name@alias`` back to the version it pointed at before its last move still in
    force: each rollback undoes one move, so two rollbacks go back two moves."""
    with store._tx() as db:
        rows = db.execute(
            "SELECT from_version, to_version, kind FROM alias_history "
            "WHERE name = ? AND alias = ? ORDER BY seq",
            (name, alias),
        ).fetchall()
        stack: list[int | None] = []
        for row in rows:
            if row["kind"] == MOVE and row["from_version"] != row["to_version"]:
                stack.append(row["from_version"])
            elif row["kind"] == ROLLBACK and stack:
                stack.pop()
        if not rows:
            raise NotFoundLocally(
                f"model {name} has no alias {alias!r}", hint=f"mlcloud models history {name}"
            )
        target = stack[-1] if stack else None
        if target is None:
            raise SpecError(
                f"{name}@{alias} has no earlier version to roll back to",
                hint=f"mlcloud models history {name} shows its moves",
            )
        return _move_in(db, name, alias, target, actor, reason, None, ROLLBACK)


def note(
    store: Store, name: str, alias: str, version: int, *, actor: str, reason: str
) -> AliasMove:
    """An entry that moves nothing (from == to): a redeploy, a rollout's decision."""
    with store._tx() as db:
        return _append(db, name, alias, (version, version), actor, reason, NOTE)


def history(store: Store, name: str, alias: str | None = None) -> list[AliasMove]:
    query, args = "SELECT * FROM alias_history WHERE name = ?", [name]
    if alias is not None:
        query += " AND alias = ?"
        args.append(alias)
    rows = store._db.execute(query + " ORDER BY seq", args).fetchall()
    if not rows:
        versions_of(store, name)  # NotFoundLocally for an unknown model
    return [_move(r) for r in rows]


# ---- endpoints following an alias -------------------------------------------------------------
def follow(store: Store, endpoint: str, provider: str, ref: tuple[str, str] | None) -> None:
    """Record that ``endpoint`` follows ``ref`` (name, alias); ``None``: it follows nothing."""
    with store._tx() as db:
        db.execute(
            "DELETE FROM model_followers WHERE endpoint = ? AND provider = ?", (endpoint, provider)
        )
        if ref is not None:
            db.execute(
                "INSERT INTO model_followers (endpoint, provider, name, alias) VALUES (?, ?, ?, ?)",
                (endpoint, provider, *ref),
            )


def followers(store: Store, name: str, alias: str | None = None) -> list[dict[str, str]]:
    query, args = "SELECT * FROM model_followers WHERE name = ?", [name]
    if alias is not None:
        query += " AND alias = ?"
        args.append(alias)
    rows = store._db.execute(query + " ORDER BY provider, endpoint", args).fetchall()
    return [dict(r) for r in rows]


def serving(store: Store, version: ModelVersionRecord) -> list[EndpointRecord]:
    """Endpoints serving ``version``: their deploy recorded its ref (``details["registry_ref"]``),
    or, deployed without a ref, they serve its content (same digest or URI)."""
    found = []
    for ep in store.list_endpoints():
        ref = ep.details.get("registry_ref")
        same_content = bool(version.sha256 and ep.model_sha256 == version.sha256)
        if ep.state is not EndpointState.DELETED and (
            ref == version.ref or (ref is None and (same_content or ep.model == version.uri))
        ):
            found.append(ep)
    return found


def names(store: Store) -> Sequence[str]:
    return [
        r["name"] for r in store._db.execute("SELECT name FROM registered_models ORDER BY name")
    ]
