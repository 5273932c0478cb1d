"""The model registry (DESIGN.md "The MLOps loop"): named models, numbered versions with their
lineage, aliases with an append-only history, rollback, integrity.

Portable and local-first: the store (:mod:`mlcloud.store.models`) is the record; a version
registered on a cloud profile is mirrored into that cloud's native registry through the
provider's registry hooks (``plan_register``/``register``/``sync_aliases``/``native_drift``;
providers without a native registry answer None / nothing). :mod:`mlcloud.api` wraps this
with the redeploys of endpoints following an alias.
"""

from __future__ import annotations

import contextlib
import getpass
import re
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcloud import datadigest, modeldir, registry
from mlcloud.config import load_config
from mlcloud.errors import MlcloudError, MlcloudWarning, ModelError, NotFoundLocally, SpecError
from mlcloud.provider import Provider
from mlcloud.records import AliasMove, JobRecord, JobState, ModelVersionRecord
from mlcloud.store import Store
from mlcloud.store import models as db

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
REF_HINT = "a model reference is NAME:VERSION (iris:3) or NAME@ALIAS (iris@champion)"
DEFAULT_ALIAS = "champion"

_ACTOR: ContextVar[str | None] = ContextVar("mlcloud_registry_actor", default=None)


# ---- who acts ----------------------------------------------------------------------------------
def actor() -> str:
    """Who the alias history records: the name :func:`acting_as` set, else the OS user."""
    who = _ACTOR.get()
    if who:
        return who
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a bare container)
        return "unknown"


@contextlib.contextmanager
def acting_as(who: str) -> Iterator[None]:
    """Record ``who`` (a server token's name) as the actor of registry changes made inside."""
    token = _ACTOR.set(who)
    try:
        yield
    finally:
        _ACTOR.reset(token)


class NativeSyncWarning(MlcloudWarning):
    """An alias move is recorded but the cloud's registry refused to mirror it."""


# ---- references ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name if self.version is None else f"{self.name}:{self.version}"


def looks_like_ref(text: str) -> bool:
    """A model argument meant as a registry reference (not a path, URI or job id)."""
    return "://" not in text and "/" not in text and ("@" in text or ":" in text)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise SpecError(
            f"model name {name!r}: letters, digits, '.', '_' and '-', starting with a letter "
            "or digit (at most 128)",
            hint=REF_HINT,
        )
    return name


def check_alias(alias: str) -> str:
    if not ALIAS.match(alias):
        raise SpecError(
            f"alias {alias!r}: lowercase letters, digits, '_' and '-', starting with a letter",
            hint="e.g. champion, challenger, staging",
        )
    return alias


def parse_ref(text: str, *, bare: bool = False) -> Ref:
    """``NAME@ALIAS`` / ``NAME:VERSION`` (and ``NAME`` alone when ``bare``); SpecError else."""
    name, at, alias = text.partition("@")
    if at:
        return Ref(check_name(name), alias=check_alias(alias))
    name, colon, number = text.partition(":")
    if colon:
        if not number.isdigit() or int(number) < 1:
            raise SpecError(f"{text!r}: the version must be a number from 1", hint=REF_HINT)
        return Ref(check_name(name), version=int(number))
    if not bare:
        raise SpecError(f"{text!r} is not a model reference", hint=REF_HINT)
    return Ref(check_name(name))


def resolve(store: Store, ref: Ref | str) -> ModelVersionRecord:
    """The version a reference names (a bare name: its latest version)."""
    ref = parse_ref(ref, bare=True) if isinstance(ref, str) else ref
    if ref.alias is not None:
        return db.get_version(store, ref.name, db.alias_version(store, ref.name, ref.alias))
    if ref.version is not None:
        return db.get_version(store, ref.name, ref.version)
    versions = db.versions_of(store, ref.name)
    if not versions:
        raise NotFoundLocally(f"model {ref.name} has no versions left")
    return versions[-1]


# ---- registering -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """What a registration source resolves to."""

    uri: str
    sha256: str | None
    manifest: dict[str, Any] | None
    job: JobRecord | None
    copied_from: ModelVersionRecord | None = None


def _local_manifest(uri: str) -> dict[str, Any] | None:
    """The verified manifest of a local model dir (ModelDirError if tampered); None: remote."""
    if datadigest.is_remote(uri):
        return None
    return modeldir.verify(Path(uri.removeprefix("file://")))


def _job_source(store: Store, job_id: str) -> Source:
    job = store.get_job(job_id)
    if job.state is not JobState.SUCCEEDED:
        raise SpecError(
            f"job {job_id} is {job.state}: only a succeeded job's model can be registered",
            hint=f"wait for it: mlcloud logs {job_id} -f",
        )
    uri = job.outputs.get("model_dir")
    if not uri:
        raise ModelError(f"job {job_id} recorded no model directory")
    manifest = _local_manifest(uri)
    sha = modeldir.manifest_digest(manifest) if manifest else job.outputs.get("model_sha256")
    recorded = job.outputs.get("model_sha256")
    if manifest and sha and recorded and recorded != sha:
        raise ModelError(
            f"the model of job {job_id} changed after the job finished (digest now "
            f"{sha[:12]}…, recorded {recorded[:12]}…): refusing to register it"
        )
    return Source(uri, sha, manifest, job)


def resolve_source(store: Store, source: str) -> Source:
    """A job id, a model dir, a URI or a registry ref → what to register."""
    path = Path(source).expanduser()
    if path.is_dir():
        manifest = modeldir.verify(path.resolve())
        digest = modeldir.manifest_digest(manifest)
        return Source(str(path.resolve()), digest, manifest, _job_with_digest(store, digest))
    if "://" in source:
        local = _local_manifest(source)
        return Source(source, modeldir.manifest_digest(local) if local else None, local, None)
    if looks_like_ref(source):
        version = resolve(store, source)
        copied = _maybe_job(store, version.source_job)
        return Source(version.uri, version.sha256, None, copied, copied_from=version)
    try:
        return _job_source(store, source)
    except NotFoundLocally:
        raise NotFoundLocally(
            f"{source!r} is neither a model directory, a URI, a model reference nor a job id",
            hint="pass a model dir, a job id from `mlcloud jobs`, or NAME:VERSION",
        ) from None


def _maybe_job(store: Store, job_id: str | None) -> JobRecord | None:
    if not job_id:
        return None
    try:
        return store.get_job(job_id)
    except NotFoundLocally:
        return None


def _job_with_digest(store: Store, digest: str) -> JobRecord | None:
    """The succeeded job that recorded exactly this model, for a model dir given by path."""
    for record in store.list_jobs(limit=10_000):
        if record.state is JobState.SUCCEEDED and record.outputs.get("model_sha256") == digest:
            return record
    return None


def job_metrics_fallback(job: JobRecord) -> dict[str, Any]:
    """What a job without collected tracking still tells: its hyperparameters as params.
    Metrics come only from ``mlcloud.tracking.job_metrics`` (``metrics_of``), the one reader
    of the collected ``metrics.json``."""
    params = job.spec.get("hyperparameters") or {}
    return {"params": dict(params), "metrics": {}}


def _details(src: Source, tracked: dict[str, Any] | None) -> dict[str, Any]:
    if src.copied_from is not None:
        copied = {k: v for k, v in src.copied_from.details.items() if k != "native"}
        return {**copied, "copied_from": src.copied_from.ref}
    manifest = src.manifest or {}
    details: dict[str, Any] = {
        "manifest": manifest.get("files"),
        "library_versions": manifest.get("versions"),
        "signature": manifest.get("signature"),
        "data": {},
        "metrics": {},
        "params": {},
    }
    if src.job is not None:
        details["data"] = datadigest.digests(dict(src.job.spec.get("inputs") or {}))
        own = job_metrics_fallback(src.job)  # for a job that logged through no tracking
        tracked = tracked or {}
        details["metrics"] = dict(tracked.get("metrics") or own["metrics"])
        details["params"] = dict(tracked.get("params") or own["params"])
    return details


def register(
    store: Store, source: str, name: str, *, provider: str | None = None,
    metrics_of: Callable[[JobRecord], dict[str, Any]] | None = None, reason: str | None = None,
) -> ModelVersionRecord:  # fmt: skip
    """Register ``source`` as the next version of ``name``. ``metrics_of``: a job's
    ``{"params", "metrics"}`` (``mlcloud.tracking.job_metrics``); what it lacks is read from
    the job itself (hyperparameters, ``metrics.json``)."""
    check_name(name)
    src = resolve_source(store, source)
    tracked = metrics_of(src.job) if metrics_of is not None and src.job is not None else None
    manifest = src.manifest or {}
    if provider is None:
        provider = src.job.provider if src.job is not None else None
    profile = registry.resolve_profile(load_config(), provider).name
    details = _details(src, tracked)
    if reason:
        details["reason"] = reason
    framework = manifest.get("framework") or (
        src.copied_from.framework if src.copied_from else None
    )
    version = ModelVersionRecord(
        name=name, version=0, uri=src.uri, sha256=src.sha256, framework=framework,
        source_job=src.job.id if src.job is not None else None, provider=profile,
        created_by=actor(), details=details,
    )  # fmt: skip
    version = db.add_version(store, version)
    _register_natively(store, version)
    return version


# ---- native registries (provider hooks, where the provider has them) -----------------------
def provider_of(store: Store, version: ModelVersionRecord) -> Provider[Any] | None:
    """The provider of the profile the version lives on; None if no longer configured."""
    try:
        profile = registry.resolve_profile(load_config(), version.provider)
        return registry.get_provider(profile, store)
    except MlcloudError:
        return None


def _register_natively(store: Store, version: ModelVersionRecord) -> None:
    """Create the native entry; a failure removes the version again (nothing half-made)."""
    prov = provider_of(store, version)
    if prov is None:
        return
    try:
        plan = prov.plan_register(version)
        if plan is None:
            return
        native = prov.register(plan)
    except BaseException:
        db.delete_version(store, version.name, version.version)
        raise
    version.details["native"] = dict(native)
    db.set_details(store, version.name, version.version, version.details)


def _sync_native(store: Store, name: str, numbers: set[int | None]) -> None:
    """After a move: each affected version mirrored natively gets its aliases re-synced."""
    aliases = db.aliases_of(store, name)
    for number in sorted(n for n in numbers if n is not None):
        try:
            version = db.get_version(store, name, number)
        except NotFoundLocally:
            continue
        if not version.details.get("native"):
            continue
        prov = provider_of(store, version)
        if prov is None:
            continue
        mine = sorted(a for a, v in aliases.items() if v == number)
        try:  # the move is recorded: a cloud that refuses the mirror is drift, not a failure
            prov.sync_aliases(version, mine)
        except MlcloudError as exc:
            warnings.warn(
                f"{version.ref}: the native registry was not updated ({exc.message}); "
                f"`mlcloud models show {version.ref}` reports the drift",
                NativeSyncWarning,
                stacklevel=2,
            )


def native_drift(store: Store, version: ModelVersionRecord) -> list[str]:
    """Differences between the record and the native registry (empty: in step or none)."""
    if not version.details.get("native"):
        return []
    prov = provider_of(store, version)
    if prov is None:
        return [f"profile {version.provider!r} is no longer configured: cannot compare"]
    aliases = db.aliases_of(store, version.name)
    mine = sorted(a for a, v in aliases.items() if v == version.version)
    try:
        return prov.native_drift(version, mine)
    except MlcloudError as exc:
        return [f"cannot read the native registry: {exc}"]


# ---- aliases -----------------------------------------------------------------------------------
def move_alias(
    store: Store, name: str, alias: str, version: int, *, reason: str | None = None,
    expect: int | None = None,
) -> AliasMove:  # fmt: skip
    check_alias(alias)
    move = db.move_alias(store, name, alias, version, actor=actor(), reason=reason, expect=expect)
    _sync_native(store, name, {move.from_version, move.to_version})
    return move


def rollback(
    store: Store, name: str, alias: str = DEFAULT_ALIAS, *, reason: str | None = None
) -> AliasMove:
    check_alias(alias)
    move = db.rollback(store, name, alias, actor=actor(), reason=reason or "rollback")
    _sync_native(store, name, {move.from_version, move.to_version})
    return move


def note(
    name: str, alias: str, version: int, reason: str, *, store: Store | None = None
) -> AliasMove:
    """Append a history entry that moves nothing (e.g. a rollout's decision)."""
    store = store or Store.open()
    return db.note(store, name, alias, version, actor=actor(), reason=reason)


def history(store: Store, name: str) -> list[AliasMove]:
    return db.history(store, name)


def delete(store: Store, name: str, version: int) -> None:
    """Delete ``name:version``: refused while an alias points at it or an endpoint serves it."""
    db.delete_version(store, name, version)


# ---- integrity and trust -----------------------------------------------------------------------
def integrity(version: ModelVersionRecord) -> list[str]:
    """What no longer matches the registered sha256 (empty: intact, or remote)."""
    if datadigest.is_remote(version.uri):
        return []
    root = Path(version.uri.removeprefix("file://"))
    try:
        manifest = modeldir.verify(root)
    except ModelError as exc:
        return [str(exc)]
    digest = modeldir.manifest_digest(manifest)
    if version.sha256 and digest != version.sha256:
        return [
            f"the model dir's manifest changed since {version.ref} was registered (digest now "
            f"{digest[:12]}…, registered {version.sha256[:12]}…)"
        ]
    return []


def check_deployable(version: ModelVersionRecord) -> None:
    problems = integrity(version)
    if problems:
        raise ModelError(
            f"{version.ref} ({version.uri}) no longer matches its registered sha256: "
            f"{problems[0]}; refusing to deploy it",
            hint=f"register the model again (mlcloud models register DIR --name {version.name}) "
            "or deploy another version",
        )


def trusted_version(store: Store, uri: str, digest: str | None) -> ModelVersionRecord | None:
    """A registered version vouching for this content: same digest (a local model), or same
    URI with a recorded digest (a remote one, pinned to that digest)."""
    if digest is not None:
        found = db.with_digest(store, digest)
        return found[0] if found else None
    pinned = [v for v in db.with_uri(store, uri) if v.sha256]
    return pinned[0] if pinned else None
