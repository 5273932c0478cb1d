"""What ``mlcloud models show`` tells: a model's versions and aliases, or one version's lineage
(data → job → version → endpoints serving it, on which provider), its integrity and, for a
version mirrored in a cloud's registry, the native ids and any drift from what mlcloud recorded.
"""

from __future__ import annotations

from typing import Any

from mlcloud import model_registry
from mlcloud.errors import NotFoundLocally
from mlcloud.records import ModelVersionRecord
from mlcloud.store import Store
from mlcloud.store import models as db


def _job(store: Store, job_id: str | None) -> dict[str, Any] | None:
    if not job_id:
        return None
    try:
        job = store.get_job(job_id)
    except NotFoundLocally:
        return {"id": job_id, "missing": True}
    return {
        "id": job.id,
        "name": job.name,
        "provider": job.provider,
        "type": job.type,
        "state": str(job.state),
        "created_at": job.created_at,
        "inputs": dict(job.spec.get("inputs") or {}),
    }


def endpoints_serving(store: Store, version: ModelVersionRecord) -> list[dict[str, Any]]:
    """The endpoints serving this version, on which provider, and the alias each follows."""
    follows = {
        (f["endpoint"], f["provider"]): f"{f['name']}@{f['alias']}"
        for f in db.followers(store, version.name)
    }
    return [
        {"name": ep.name, "provider": ep.provider, "type": ep.type, "state": str(ep.state),
         "url": ep.url, "follows": follows.get((ep.name, ep.provider))}
        for ep in db.serving(store, version)
    ]  # fmt: skip


def describe_version(store: Store, version: ModelVersionRecord) -> dict[str, Any]:
    """One version with its lineage, aliases, integrity problems and native drift."""
    aliases = db.aliases_of(store, version.name)
    details = version.details
    return {
        **version.to_dict(),
        "ref": version.ref,
        "aliases": sorted(a for a, v in aliases.items() if v == version.version),
        "lineage": {
            "data": details.get("data") or {},
            "job": _job(store, version.source_job),
            "version": version.ref,
            "endpoints": endpoints_serving(store, version),
        },
        "integrity": model_registry.integrity(version),
        "native": details.get("native") or {},
        "drift": model_registry.native_drift(store, version),
    }


def describe_model(store: Store, name: str) -> dict[str, Any]:
    """A model: its versions (newest first), aliases and the endpoints following them."""
    versions = db.versions_of(store, name)
    aliases = db.aliases_of(store, name)
    by_version: dict[int, list[str]] = {}
    for alias, number in aliases.items():
        by_version.setdefault(number, []).append(alias)
    return {
        "name": name,
        "aliases": aliases,
        "followers": db.followers(store, name),
        "versions": [
            {"version": v.version, "ref": v.ref, "uri": v.uri, "sha256": v.sha256,
             "framework": v.framework, "source_job": v.source_job, "provider": v.provider,
             "created_by": v.created_by, "created_at": v.created_at,
             "aliases": sorted(by_version.get(v.version, [])),
             "metrics": v.details.get("metrics") or {}}
            for v in reversed(versions)
        ],
    }  # fmt: skip


def describe(store: Store, text: str) -> dict[str, Any]:
    """``NAME`` → the model; ``NAME:VERSION`` / ``NAME@ALIAS`` → that version's lineage."""
    ref = model_registry.parse_ref(text, bare=True)
    if ref.version is None and ref.alias is None:
        return describe_model(store, ref.name)
    return describe_version(store, model_registry.resolve(store, ref))
