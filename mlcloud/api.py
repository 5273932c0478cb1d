"""The Python SDK: the same operations as the CLI, for notebooks and scripts.

import mlcloud
job = mlcloud.train("examples/iris/job.yaml", provider="local")
job.wait()
ep = mlcloud.deploy(job.id, name="iris")
ep.predict({"instances": [[5.1, 3.5, 1.4, 0.2]]})
ep.undeploy()

This is the facade every front end uses (the CLI calls nothing else of the core but the
records and errors it hands back): it resolves profiles to providers through the registry,
loads specs, and owns the waiting loops. Planning and submitting are separate steps, like
TorchX's dry-run + schedule: ``p = plan(job)`` shows the exact native request, ``submit(p)``
sends it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack, runtime_checkable

from mlcloud import model_follow, model_lineage, model_registry, modeldir, registry
from mlcloud.config import Profile, load_config, placeholders
from mlcloud.errors import (
    MlcloudError,
    NotFoundLocally,
    ProviderUnavailable,
    SpecError,
    Transient,
)
from mlcloud.model_follow import Follows
from mlcloud.model_inputs import check_same_inputs as check_same_inputs
from mlcloud.provider import Provider
from mlcloud.records import (
    AliasMove,
    EndpointRecord,
    JobRecord,
    JobState,
    ModelVersionRecord,
    Plan,
)
from mlcloud.specs import Deployment, TrainingJob, load_job, validate_spec
from mlcloud.store import Store, mlcloud_home
from mlcloud.tracking import Comparison as Comparison
from mlcloud.tracking import compare_jobs as compare_jobs
from mlcloud.tracking import job_metrics as job_metrics
from mlcloud.trust import _registry_trust as _registry_trust
from mlcloud.trust import decide_trust as decide_trust

JobLike = TrainingJob | str | Path


# ---- providers -------------------------------------------------------------------------------
def resolve_profile(name: str | None = None) -> Profile:
    """The profile ``name`` selects (default: MLCLOUD_PROVIDER, mlcloud.yaml, local), its
    provider type checked (``ConfigError`` listing the profiles and types otherwise)."""
    return registry.resolve_profile(load_config(), name)


def get_provider(name: str | None = None, store: Store | None = None) -> Provider[Any]:
    """The provider for profile/type ``name`` (default: MLCLOUD_PROVIDER, mlcloud.yaml, local)."""
    return registry.get_provider(resolve_profile(name), store)


def provider_named(profile_name: str, store: Store) -> Provider[Any]:
    """The provider a stored job/endpoint/plan was made with (its profile, if still configured;
    else the provider type of that name with default settings)."""
    profile = resolve_profile(profile_name) if profile_name else Profile("local", "local")
    return registry.get_provider(profile, store)


@dataclass(frozen=True)
class ProviderInfo:
    type: str
    installed: bool
    origin: str  # "built-in" or the distribution that registered it
    install: str | None  # the pip line, when not installed


@dataclass(frozen=True)
class ProfileInfo:
    name: str
    type: str
    source: str  # the file it comes from
    default: bool


@dataclass(frozen=True)
class Overview:
    """What ``mlcloud providers`` shows: provider types, configured profiles, warnings."""

    providers: tuple[ProviderInfo, ...]
    profiles: tuple[ProfileInfo, ...]
    default: str
    warnings: tuple[str, ...]


def overview() -> Overview:
    """Known providers (installed or not), the configured profiles and the default."""
    config = load_config()
    registry.check_profiles(config)
    providers = tuple(
        ProviderInfo(
            type=entry.type,
            installed=(ok := registry.is_installed(entry)),
            origin=entry.origin,
            install=None if ok else entry.install,
        )
        for entry in sorted(registry.entries().values(), key=lambda e: e.type)
    )
    profiles = tuple(
        ProfileInfo(p.name, p.type, p.source, p.name == config.default)
        for p in config.profiles.values()
    )
    warnings = [*registry.clashes()]
    for package in registry.OWN_PACKAGES:
        where = registry.shadowing(package)
        if where is not None:
            warnings.append(f"{where} shadows mlcloud's {package!r} package: rename it")
    return Overview(providers, profiles, config.default, tuple(warnings))


def write_starter_config(path: str | Path, force: bool = False) -> Path:
    """Write a commented starter ``mlcloud.yaml`` (``ConfigError`` if it exists, unless force)."""
    from mlcloud.config import STARTER
    from mlcloud.errors import ConfigError

    target = Path(path)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists", hint="use --force to overwrite it")
    try:
        target.write_text(STARTER, encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            f"cannot write {target}: {e.strerror or e}", hint="choose another --path"
        ) from None
    return target


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of ``job`` (job.yaml) or ``deployment``."""
    from mlcloud.specs import json_schema as schema

    return schema(kind)


# ---- jobs ------------------------------------------------------------------------------------
def load_job_spec(job: JobLike, overrides: Sequence[str] = ()) -> TrainingJob:
    """A TrainingJob from a job file (with ``KEY=VALUE`` overrides) or as given."""
    if isinstance(job, TrainingJob):
        if overrides:
            raise SpecError("overrides apply to job files; change the TrainingJob instead")
        return job
    return load_job(Path(job), list(overrides))


def plan(
    job: JobLike, provider: str | None = None, overrides: Sequence[str] | None = None
) -> Plan[TrainingJob]:
    """The exact native request(s) ``train`` would send, without sending anything."""
    spec = load_job_spec(job, overrides or ())  # a bad spec fails before any provider loads
    with placeholders() as missing:
        planned = get_provider(provider).plan_job(spec)
    _warn_missing(planned, missing)
    return planned


class MissingSettingsWarning(UserWarning):
    """A dry-run's plan holds ``<name>`` placeholders for settings the profile lacks."""


def _warn_missing(planned: Plan[Any], missing: list[str]) -> None:
    """One warning naming every missing setting (a real submit would refuse on the first)."""
    if missing:
        import warnings

        warnings.warn(
            MissingSettingsWarning(
                f"the {planned.provider} profile lacks {', '.join(missing)}: the plan shows "
                f"{', '.join(f'<{m}>' for m in missing)} in their place, and a real submit "
                "refuses until they are set in mlcloud.yaml (mlcloud init writes a starter)"
            ),
            stacklevel=3,
        )


def submit(planned: Plan[TrainingJob]) -> Job:
    """Send a plan made by :func:`plan` with the provider (profile) that made it."""
    store = Store.open()
    prov = provider_named(planned.provider, store)
    return Job(prov, prov.submit_job(planned))


def train(job: JobLike, provider: str | None = None, overrides: Sequence[str] | None = None) -> Job:
    """Submit a training job and return a handle on it (it runs detached)."""
    spec = load_job_spec(job, overrides or ())
    prov = get_provider(provider)
    return Job(prov, prov.submit_job(prov.plan_job(spec)))


def job(job_id: str) -> Job:
    store = Store.open()
    record = store.get_job(job_id)
    return Job(provider_named(record.provider, store), record)


def list_jobs(provider: str | None = None, limit: int = 50) -> list[JobRecord]:
    """Jobs in the local state store (all providers, or one profile's), newest first. An
    unfinished job of a provider whose status is a local look (``status_is_local``) is
    refreshed: a job whose processes died shows as such, not as RUNNING; no cloud is called."""
    store = Store.open()
    providers: dict[str, Provider[Any] | None] = {}

    def refreshed(record: JobRecord) -> JobRecord:
        if record.state.terminal:
            return record
        if record.provider not in providers:
            try:
                local = registry.provider_class(record.type).status_is_local
                providers[record.provider] = (
                    provider_named(record.provider, store) if local else None
                )
            except MlcloudError:  # a provider no longer installed or configured: as stored
                providers[record.provider] = None
        prov = providers[record.provider]
        try:
            return prov.job_status(record.id) if prov is not None else record
        except MlcloudError:  # one job that cannot be looked at does not fail the listing
            return record

    return [refreshed(r) for r in store.list_jobs(provider=provider, limit=limit)]


def recover_store() -> dict[str, Any]:
    """Rebuild a damaged or emptied state store from its newest sound backup and the copies of
    job records in the job directories (``mlcloud.store.recover``); returns what was done."""
    from mlcloud import store

    return store.recover(store.mlcloud_home() / "state.db")


def backup_store() -> Path | None:
    """Back up the state store now (SQLite's online backup API); ``None`` when the copy was
    not kept (it failed its check or holds fewer jobs than the newest backup)."""
    return Store.open().backup()


class Job:
    """A submitted job on any provider."""

    def __init__(self, provider: Provider[Any], record: JobRecord) -> None:
        self.provider = provider
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def status(self) -> JobRecord:
        """Refresh and return the job's record (a pure read: it changes nothing)."""
        self.record = self.provider.job_status(self.id)
        return self.record

    def advance(self) -> JobRecord:
        """Refresh and take the transition the job is due (e.g. re-submit a failed attempt
        that ``max_restarts`` allows). What a waiting loop calls."""
        self.record = self.provider.advance_job(self.id)
        return self.record

    def logs(self, follow: bool = False, poll: float = 0.5) -> Iterator[str]:
        """The job's log lines. Following is a read, so a provider's stream ends when an
        attempt ends; this then advances the job (a due restart is submitted) and follows the
        next attempt, until the job itself ends."""
        if not follow:
            yield from self.provider.job_logs(self.id)
            return
        shown = 0  # each pass reads the job's log from its start: skip what was shown
        while True:
            for index, line in enumerate(self.provider.job_logs(self.id, follow=True)):
                if index >= shown:
                    shown += 1
                    yield line
            if self.advance().state.terminal:
                return
            time.sleep(poll)

    def events(self) -> list[dict[str, Any]]:
        """The job's state history from the store, oldest first."""
        return self.provider.store.job_events(self.id)

    def cancel(self) -> JobRecord:
        self.record = self.provider.cancel_job(self.id)
        return self.record

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> JobRecord:
        """Block until the job ends, advancing it on the way (restarts happen here).

        After ``timeout`` seconds: ``Transient`` with code ``WaitTimeout`` (the job keeps
        running), like every waiting loop in mlcloud.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.advance().state.terminal:
            if deadline is not None and time.monotonic() > deadline:
                raise self.provider.origin.error(
                    Transient,
                    f"job {self.id} still {self.record.state} after {timeout:.0f}s",
                    code="WaitTimeout",
                    hint=f"it keeps running: mlcloud logs {self.id} -f",
                )
            time.sleep(poll)
        return self.record

    @property
    def model_dir(self) -> str | None:
        return self.record.outputs.get("model_dir")

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.record.state}, provider={self.provider.name!r})"


# ---- endpoints ------------------------------------------------------------------------------
class DeployOptions(TypedDict, total=False):
    """What a deployment may set besides its model and name (``None``: not set).

    ``trust_code``: the user trusts the model's own code (a pickle, a torch module class, a
    custom predictor) although no job mlcloud ran produced it; see :func:`decide_trust`."""

    replicas: int | None
    min_replicas: int | None
    max_replicas: int | None
    port: int | None
    host: str | None
    env: Mapping[str, str] | None
    resources: Mapping[str, object] | None
    trust_code: bool | None
    #: request capture for monitoring: a sample rate, or ``{sample, max_mb}``
    capture: float | Mapping[str, object] | None
    #: scheduled drift checks: ``{every, window, cooldown, on_drift: {pipeline}}``
    monitor: Mapping[str, object] | None
    #: a split between the new and the serving version: ``{"new": W, "previous": 100 - W}``
    traffic: Mapping[str, int] | None


def _job_exists(store: Store, job_id: str) -> bool:
    try:
        store.get_job(job_id)
    except NotFoundLocally:
        return False
    return True


def resolve_model(ref: str, store: Store) -> tuple[str, str | None]:
    """A model reference → (model dir or URI, source job id). Refs: a dir, a URI, a registry
    ref (``NAME@ALIAS``, ``NAME:VERSION``; a version failing its sha256 is refused) or a job id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve()), None
    if "://" in ref:
        return ref, None
    if model_registry.looks_like_ref(ref):
        version = model_registry.resolve(store, ref)
        model_registry.check_deployable(version)
        job = version.source_job
        return version.uri, job if job and _job_exists(store, job) else None
    try:
        record = store.get_job(ref)
    except NotFoundLocally:
        raise NotFoundLocally(
            f"{ref!r} is neither a model directory, a URI nor a known job id",
            hint="pass a model dir, or a job id from `mlcloud jobs list`",
        ) from None
    if record.state is not JobState.SUCCEEDED:
        raise MlcloudError(
            f"job {ref} is {record.state}, so it has no model to deploy",
            hint=f"wait for it: mlcloud logs {ref} -f",
        )
    model = record.outputs.get("model_dir")
    if not model:
        raise MlcloudError(f"job {ref} recorded no model directory")
    return model, record.id


def build_deployment(
    model: str, name: str, store: Store, **options: Unpack[DeployOptions]
) -> Deployment:
    uri, source_job = resolve_model(model, store)
    trust, source_job = decide_trust(uri, source_job, store, bool(options.get("trust_code")))
    data: dict[str, object] = {"name": name, "model": uri, "source_job": source_job}
    if trust is not None:
        data["trust"] = trust.model_dump()
    low, high = options.get("min_replicas"), options.get("max_replicas")
    if low is not None or high is not None:
        low = low if low is not None else 1
        # A plain mapping: a bad range is the deployment's SpecError, not pydantic's dump.
        data["replicas"] = {"min": low, "max": high if high is not None else max(low, 1)}
    elif options.get("replicas") is not None:
        data["replicas"] = options.get("replicas")
    sample = options.get("capture")
    if sample is not None:
        data["capture"] = {"sample": sample} if isinstance(sample, int | float) else dict(sample)
    for key in ("port", "host", "env", "resources", "monitor", "traffic"):
        value = options.get(key)
        if value:
            data[key] = dict(value) if isinstance(value, Mapping) else value
    return validate_spec(Deployment, data, "deployment")


def plan_deploy(
    model: str, name: str, provider: str | None = None, **options: Unpack[DeployOptions]
) -> Plan[Deployment]:
    """The exact native request(s) ``deploy`` would send, changing nothing."""
    with placeholders() as missing:
        prov = get_provider(provider)
        planned = prov.plan_deploy(build_deployment(model, name, prov.store, **options))
    _warn_missing(planned, missing)
    return planned


def deploy(
    model: str,
    name: str,
    provider: str | None = None,
    *,
    force: bool = False,
    follow_alias: bool = False,
    **options: Unpack[DeployOptions],
) -> Endpoint:
    """Serve ``model`` (a model dir, URI, job id or registry ref) as ``name`` (updates it if it
    exists). An update whose model takes other inputs is refused (SpecError) unless ``force``:
    the endpoint's callers would break. ``follow_alias`` (``model`` is ``NAME@ALIAS``): moving
    the alias redeploys this endpoint. ``Endpoint.previous`` is the record it replaced."""
    prov = get_provider(provider)
    version, follows = model_follow.deployed_ref(model, prov.store, follow_alias)
    if version is not None:
        model = version.ref  # the alias read once: what is deployed is what is recorded
    deployment = build_deployment(model, name, prov.store, **options)
    previous = _existing_endpoint(prov, name)
    if previous is not None and not force:
        old = previous.details.get("registry_ref") or previous.model
        check_same_inputs(name, old, version.ref if version else deployment.model, prov)
    record = prov.deploy(prov.plan_deploy(deployment))
    record = model_follow.record(prov.store, record, version, follows)
    if version is not None and follows is not None:
        redeploy = _redeployer(prov.store)
        if model_follow.catch_up(prov.store, record, version, follows, redeploy):
            record = prov.store.get_endpoint(name, prov.name)
    endpoint = Endpoint(prov, record)
    endpoint.previous = previous
    return endpoint


def _existing_endpoint(prov: Provider[Any], name: str) -> EndpointRecord | None:
    try:
        return prov.store.get_endpoint(name, prov.name)
    except NotFoundLocally:
        return None


def endpoint(name: str, provider: str | None = None) -> Endpoint:
    store = Store.open()
    record = store.get_endpoint(name, provider)
    return Endpoint(provider_named(record.provider, store), record)


def list_endpoints(provider: str | None = None) -> list[EndpointRecord]:
    """Endpoints in the local state store (all providers, or one profile's)."""
    return Store.open().list_endpoints(provider=provider)


class Endpoint:
    """A deployed endpoint on any provider."""

    def __init__(self, provider: Provider[Any], record: EndpointRecord) -> None:
        self.provider = provider
        self.record = record
        #: the record a deploy replaced (an update), else None
        self.previous: EndpointRecord | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def url(self) -> str | None:
        return self.record.url

    def status(self) -> EndpointRecord:
        self.record = self.provider.endpoint_status(self.name)
        return self.record

    def predict(self, payload: Any) -> Any:
        """``{"instances": [...]}`` (or a bare list of instances) → ``{"predictions": [...]}``."""
        if isinstance(payload, list):
            payload = {"instances": payload}
        return self.provider.predict(self.name, payload)

    def undeploy(self) -> None:
        self.provider.undeploy(self.name)

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {self.record.state}, url={self.url!r})"


# ---- model registry (thin wrappers over mlcloud.model_registry; README "Registry") -------------
def register_model(
    source: str,
    name: str,
    *,
    alias: str | None = None,
    provider: str | None = None,
    reason: str | None = None,
) -> ModelVersionRecord:
    """Register ``source`` (a job id, a model dir, a URI or a ref) as the next version of
    ``name``; with ``alias``, point it there (endpoints following it are redeployed)."""
    store = Store.open()
    version = model_registry.register(
        store, source, name, provider=provider, metrics_of=job_metrics, reason=reason
    )
    if alias is not None:
        move_alias(name, alias, version.version, reason=reason or f"registered {version.ref}")
    return version


def list_models() -> list[dict[str, Any]]:
    """One entry per registered model: versions, latest, aliases."""
    from mlcloud.store import models as registry_db

    return registry_db.summaries(Store.open())


def model(ref: str) -> dict[str, Any]:
    """``NAME``: the model's versions and aliases; ``NAME:VERSION`` / ``NAME@ALIAS``: that
    version with its lineage (data → job → version → endpoints), integrity and native drift."""
    return model_lineage.describe(Store.open(), ref)


def move_alias(
    name: str, alias: str, version: int, *, reason: str | None = None, expect: int | None = None
) -> AliasMove:
    """Point ``name@alias`` at ``version`` (``expect``: only if it points at that version now),
    append the move to the history, and redeploy the endpoints following the alias."""
    store = Store.open()
    move = model_registry.move_alias(store, name, alias, version, reason=reason, expect=expect)
    _follow(store, move)
    return move


def rollback_model(name: str, alias: str = "champion", *, reason: str | None = None) -> AliasMove:
    """Move ``name@alias`` back to the version it pointed at before its last move, and redeploy
    the endpoints following it (zero-downtime update)."""
    store = Store.open()
    move = model_registry.rollback(store, name, alias, reason=reason)
    _follow(store, move)
    return move


def alias_history(name: str) -> list[AliasMove]:
    """Every alias move of ``name``, oldest first (append-only)."""
    return model_registry.history(Store.open(), name)


def delete_model_version(name: str, version: int) -> None:
    """Refused (Conflict) while an alias points at it or an endpoint serves it."""
    model_registry.delete(Store.open(), name, version)


def _redeployer(store: Store) -> model_follow.Redeploy:
    """How a following endpoint gets a new version: with its recorded settings, through the
    provider's zero-downtime update."""

    def redeploy(record: EndpointRecord, version: ModelVersionRecord, follows: Follows) -> None:
        prov = provider_named(record.provider, store)
        old = record.details.get("registry_ref") or record.model
        check_same_inputs(record.name, old, version.ref, prov)
        job = version.source_job
        trust, job = decide_trust(version.uri, job if job and _job_exists(store, job) else None,
                                  store, False)  # fmt: skip
        skip = ("model", "source_job", "trust", "traffic")
        data: dict[str, Any] = {k: v for k, v in record.spec.items() if k not in skip}
        env = {k: v for k, v in (data.get("env") or {}).items() if k != modeldir.TRUST_ENV}
        _check_env_kept(record.name, env, follows)
        data.update(model=version.uri, source_job=job, env=env)
        if trust is not None:
            data["trust"] = trust.model_dump()
        deployment = validate_spec(Deployment, data, "deployment")
        new = prov.deploy(prov.plan_deploy(deployment))
        model_follow.record(store, new, version, follows)

    return redeploy


def _check_env_kept(endpoint: str, env: Mapping[str, Any], follows: Follows) -> None:
    """The store keeps no secret-looking env value (README, Security): such an endpoint cannot
    be redeployed unattended with its settings, so it is refused rather than given "***"."""
    from mlcloud.sensitive import REDACTED

    hidden = sorted(k for k, v in env.items() if v == REDACTED)
    if hidden:
        raise SpecError(
            f"endpoint {endpoint}'s env {', '.join(hidden)} is not kept by the state store "
            "(secret-looking values never are), so it cannot be redeployed unattended",
            hint=f"mlcloud deploy {follows[0]}@{follows[1]} --name {endpoint} --follow-alias "
            f"--env {hidden[0]}=...",
        )


def _follow(store: Store, move: AliasMove) -> None:
    """Redeploy the endpoints following the moved alias (``model_follow``)."""
    model_follow.redeploy_followers(store, move, _redeployer(store))


# ---- the serving image -----------------------------------------------------------------------
@runtime_checkable
class ImageBuild(Protocol):
    """What ``serving.image.build_image`` returns (its ``ImageResult``)."""

    bento_tag: str
    image: str | None  # the container image, when one was built
    engine: str | None  # the container engine used
    message: str
    commands: tuple[str, ...]  # how to build the image elsewhere (empty when built here)


def build_image(model_dir: str | Path | None, tag: str) -> ImageBuild:
    """Build the serving Bento (and its container image where an engine runs) for
    ``model_dir`` (None: any model). ``ModelError`` for a bad model dir, ``SpecError`` for a
    bad tag; needs the ``serve`` extra."""
    build = registry.serving_target(registry.BUILD_IMAGE)
    if not callable(build):
        raise ProviderUnavailable("serving", registry.SERVE_INSTALL, "build_image is not callable")
    # BentoML's store goes under MLCLOUD_HOME (not ~/bentoml) unless BENTOML_HOME says otherwise
    home = None if os.environ.get("BENTOML_HOME") else mlcloud_home() / "bentoml"
    result = build(Path(model_dir) if model_dir is not None else None, tag, bentoml_home=home)
    if not isinstance(result, ImageBuild):
        raise ProviderUnavailable("serving", registry.SERVE_INSTALL, "unexpected build result")
    return result
