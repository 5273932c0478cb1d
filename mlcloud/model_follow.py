"""Endpoints that follow a registry alias (``deploy NAME@ALIAS --follow-alias``): which version
a deploy names, what the endpoint record keeps of it, and the redeploys after an alias move.

The deploy itself is :mod:`mlcloud.api`'s (trust, input checks, the provider's zero-downtime
update); it hands its redeploy step in, so this module stays below the facade.
"""

from __future__ import annotations

from collections.abc import Callable

from mlcloud import model_registry
from mlcloud.errors import MlcloudError, NotFoundLocally, SpecError
from mlcloud.records import AliasMove, EndpointRecord, ModelVersionRecord
from mlcloud.store import Store
from mlcloud.store import models as db

Follows = tuple[str, str]  # (model name, alias)
Redeploy = Callable[[EndpointRecord, ModelVersionRecord, Follows], None]
_KEYS = ("registry_ref", "registry_alias")


def deployed_ref(
    model: str, store: Store, follow_alias: bool
) -> tuple[ModelVersionRecord | None, Follows | None]:
    """The registry version a deploy's model names (None: not a ref) and the (name, alias) the
    endpoint is to follow (None: it follows nothing)."""
    if not model_registry.looks_like_ref(model):
        if follow_alias:
            raise SpecError(
                f"--follow-alias needs a model given as NAME@ALIAS, not {model!r}",
                hint="e.g. mlcloud deploy iris@champion --name iris --follow-alias",
            )
        return None, None
    ref = model_registry.parse_ref(model)
    if follow_alias and ref.alias is None:
        raise SpecError(
            f"--follow-alias follows an alias: {model!r} names a fixed version",
            hint=f"deploy {ref.name}@ALIAS --follow-alias",
        )
    follows = (ref.name, ref.alias) if follow_alias and ref.alias else None
    return model_registry.resolve(store, ref), follows


def record(
    store: Store,
    endpoint: EndpointRecord,
    version: ModelVersionRecord | None,
    follows: Follows | None,
) -> EndpointRecord:
    """Keep on the endpoint which registry version it serves (``details["registry_ref"]``) and
    the alias it follows (``details["registry_alias"]``); a deploy of anything else ends the
    following."""
    db.follow(store, endpoint.name, endpoint.provider, follows)
    if version is None and not any(k in endpoint.details for k in _KEYS):
        return endpoint
    for key in _KEYS:
        endpoint.details.pop(key, None)
    if version is not None:
        endpoint.details["registry_ref"] = version.ref
        if follows is not None:
            endpoint.details["registry_alias"] = f"{follows[0]}@{follows[1]}"
    return store.put_endpoint(endpoint)


def redeploy_followers(store: Store, move: AliasMove, redeploy: Redeploy) -> None:
    """Redeploy each endpoint following the moved alias; each outcome is a note in the alias
    history. A failure is raised after every follower was tried (the alias stays moved)."""
    if move.to_version is None or move.to_version == move.from_version:
        return
    version = db.get_version(store, move.name, move.to_version)
    failed = []
    for follower in db.followers(store, move.name, move.alias):
        where = f"endpoint {follower['endpoint']} ({follower['provider']})"
        try:
            endpoint = store.get_endpoint(follower["endpoint"], follower["provider"])
            if str(endpoint.state) == "DELETED":
                raise NotFoundLocally(f"{where} was undeployed")
            model_registry.check_deployable(version)
            redeploy(endpoint, version, (move.name, move.alias))
        except NotFoundLocally:
            db.follow(store, follower["endpoint"], follower["provider"], None)
            continue  # undeployed since: it follows nothing any more
        except MlcloudError as exc:
            failed.append(f"{where}: {exc}")
            note = f"{where} follows @{move.alias}: redeploy to {version.ref} FAILED: {exc}"
        else:
            note = f"{where} follows @{move.alias}: redeployed to {version.ref}"
        model_registry.note(move.name, move.alias, version.version, note, store=store)
    if failed:
        raise MlcloudError(
            f"{move.name}@{move.alias} moved to {version.version}, but " + "; ".join(failed),
            hint=f"fix it, then deploy {move.name}@{move.alias} --follow-alias again",
        )


def catch_up(
    store: Store,
    endpoint: EndpointRecord,
    deployed: ModelVersionRecord,
    follows: Follows,
    redeploy: Redeploy,
) -> bool:
    """After a deploy with --follow-alias: a move made while it ran (before the endpoint was
    recorded as a follower) redeployed nothing, so bring the endpoint to the alias's version
    now. Returns whether it redeployed."""
    name, alias = follows
    current = db.alias_version(store, name, alias)
    if current == deployed.version:
        return False
    version = db.get_version(store, name, current)
    model_registry.check_deployable(version)
    redeploy(endpoint, version, follows)
    where = f"endpoint {endpoint.name} ({endpoint.provider})"
    reason = f"{where} caught up with @{alias} (moved during its deploy): now {version.ref}"
    model_registry.note(name, alias, version.version, reason, store=store)
    return True
