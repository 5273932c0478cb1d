"""The Python SDK: the same operations as the CLI, for notebooks and scripts.

import mlcloud
job = mlcloud.train("examples/iris/job.yaml", provider="local")
job.wait()
ep = mlcloud.deploy(job.id, name="iris")
ep.predict({"instances": [[5.1, 3.5, 1.4, 0.2]]})
ep.undeploy()
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlcloud.config import Profile, load_config
from mlcloud.errors import MlcloudError, NotFoundLocally, SpecError
from mlcloud.provider import EndpointRecord, JobRecord, JobState, Plan, Provider
from mlcloud.registry import get_provider as _provider_for_profile
from mlcloud.specs import Deployment, ReplicaRange, TrainingJob, load_job, validate_spec
from mlcloud.store import Store

JobLike = TrainingJob | str | Path


def get_provider(name: str | None = None, store: Store | None = None) -> Provider:
    """The provider for profile/type ``name`` (default: MLCLOUD_PROVIDER, mlcloud.yaml, local)."""
    return _provider_for_profile(load_config().resolve(name), store)


def provider_named(profile_name: str, store: Store) -> Provider:
    """The provider a stored job/endpoint was made with (its profile, if still configured)."""
    config = load_config()
    profile = config.profiles.get(profile_name)
    if profile is None:
        profile = config.resolve(profile_name) if profile_name else Profile("local", "local")
    return _provider_for_profile(profile, store)


def _as_job(job: JobLike, overrides: list[str] | None = None) -> TrainingJob:
    if isinstance(job, TrainingJob):
        if overrides:
            raise SpecError("overrides apply to job files; change the TrainingJob instead")
        return job
    return load_job(Path(job), overrides)


def plan(job: JobLike, provider: str | None = None, overrides: list[str] | None = None) -> Plan:
    """The exact native request(s) ``train`` would send, without sending anything."""
    return get_provider(provider).plan_job(_as_job(job, overrides))


def train(job: JobLike, provider: str | None = None, overrides: list[str] | None = None) -> Job:
    """Submit a training job and return a handle on it (it runs detached)."""
    prov = get_provider(provider)
    record = prov.submit_job(prov.plan_job(_as_job(job, overrides)))
    return Job(prov, record)


def job(job_id: str) -> Job:
    store = Store.open()
    record = store.get_job(job_id)
    return Job(provider_named(record.provider, store), record)


class Job:
    """A submitted job on any provider."""

    def __init__(self, provider: Provider, record: JobRecord) -> None:
        self.provider = provider
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    def status(self) -> JobRecord:
        self.record = self.provider.job_status(self.id)
        return self.record

    def logs(self, follow: bool = False) -> Iterator[str]:
        return self.provider.job_logs(self.id, follow=follow)

    def cancel(self) -> JobRecord:
        self.record = self.provider.cancel_job(self.id)
        return self.record

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> JobRecord:
        """Block until the job ends; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.status().state.terminal:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.record.state} after {timeout}s")
            time.sleep(poll)
        return self.record

    @property
    def model_dir(self) -> str | None:
        return self.record.outputs.get("model_dir")

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.record.state}, provider={self.provider.name!r})"


# ---- endpoints ------------------------------------------------------------------------------
def resolve_model(ref: str, store: Store) -> tuple[str, str | None]:
    """A model reference → (model dir or URI, source job id). Refs: a dir, a URI, or a job id."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve()), None
    if "://" in ref:
        return ref, None
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
    model: str,
    name: str,
    store: Store,
    *,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    port: int | None = None,
    host: str | None = None,
    env: dict[str, str] | None = None,
    resources: dict[str, Any] | None = None,
) -> Deployment:
    uri, source_job = resolve_model(model, store)
    data: dict[str, Any] = {"name": name, "model": uri, "source_job": source_job}
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        high = max_replicas if max_replicas is not None else max(low, 1)
        data["replicas"] = ReplicaRange(min=low, max=high).model_dump()
    elif replicas is not None:
        data["replicas"] = replicas
    for key, value in (("port", port), ("host", host), ("env", env), ("resources", resources)):
        if value:
            data[key] = value
    return validate_spec(Deployment, data, "deployment")


def plan_deploy(model: str, name: str, provider: str | None = None, **options: Any) -> Plan:
    prov = get_provider(provider)
    return prov.plan_deploy(build_deployment(model, name, prov.store, **options))


def deploy(model: str, name: str, provider: str | None = None, **options: Any) -> Endpoint:
    """Serve ``model`` (a model dir, URI or job id) as ``name`` (updates it if it exists)."""
    prov = get_provider(provider)
    deployment = build_deployment(model, name, prov.store, **options)
    record = prov.deploy(prov.plan_deploy(deployment))
    return Endpoint(prov, record)


def endpoint(name: str, provider: str | None = None) -> Endpoint:
    store = Store.open()
    record = store.get_endpoint(name, provider)
    return Endpoint(provider_named(record.provider, store), record)


class Endpoint:
    """A deployed endpoint on any provider."""

    def __init__(self, provider: Provider, record: EndpointRecord) -> None:
        self.provider = provider
        self.record = record

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
