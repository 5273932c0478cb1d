"""Running one step of a pipeline run: a job, a condition, a registration, a deployment.

Every step goes through :mod:`mlcloud.api` (the same operations as the CLI). A job step
records its job id in the store *before* the job is sent (the plan names it), so a runner
killed mid-step is resumed by adopting that job, never by sending a second one. Each step's
outputs (a job's model dir and output URIs, its metrics and params from the job record) are what
``STEP.FIELD`` references read downstream. A step's cache key is the digest of its resolved
spec and the content digests of its inputs (:mod:`mlcloud.datadigest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcloud import api, datadigest, model_registry
from mlcloud.errors import MlcloudError, NotFoundLocally, SpecError
from mlcloud.pipelines import expr
from mlcloud.pipelines.spec import _REF, Pipeline, Step, substitute
from mlcloud.records import JobRecord, JobState, ModelVersionRecord
from mlcloud.specs import TrainingJob, validate_spec
from mlcloud.store import Store
from mlcloud.store import models as models_db
from mlcloud.store import pipelines as db

POLL_S = 0.05  # a local job's status is a store read: cheap to ask often


class StepFailed(MlcloudError):
    """A step ended without success; the message says which and why."""


@dataclass
class Context:
    """What a step sees: the run, its pipeline, params, upstream outputs, the run's default
    provider, and a way to ask whether the run was cancelled."""

    run_id: str
    pipeline: Pipeline
    outputs: Mapping[str, dict[str, Any]]  # finished upstream step -> its outputs
    provider: str | None
    cancelled: Callable[[], bool]
    home: Path | None = None  # where copies of other providers' artifacts go (None: no copies)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.pipeline.params)

    def provider_of(self, step: Step) -> str | None:
        return step.provider or self.provider or self.pipeline.provider


def reference(ctx: Context, text: str) -> Any:
    """``STEP.FIELD[.KEY]`` → the upstream value; anything else is returned as written."""
    m = _REF.match(text)
    if m is None or m.group(1) not in ctx.outputs:
        return text
    try:
        return expr.lookup_in(ctx.outputs)((m.group(1), *m.group(2).split(".")))
    except expr.ExprError as e:
        raise StepFailed(f"{text}: {e}") from None


# ---- job steps --------------------------------------------------------------------------------
def job_spec(ctx: Context, step: Step, placeholder: bool = False) -> TrainingJob:
    """The step's job with params substituted, ``set`` applied and its inputs resolved (with
    ``placeholder``, an upstream output not produced yet shows as ``<STEP.FIELD>``)."""
    assert isinstance(step.job, dict)  # spec.load inlines job files
    data: dict[str, Any] = substitute(dict(step.job), ctx.params)
    for key, value in substitute(dict(step.set), ctx.params).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"step {step.name!r}, set.{key}: {part} is not a mapping")
        node[last] = value
    inputs = dict(data.get("inputs") or {})
    for name, value in step.inputs.items():
        m = _REF.match(value)
        if placeholder and m is not None and m.group(1) not in ctx.outputs:
            inputs[name] = f"<{value}>"
            continue
        resolved = reference(ctx, value)
        if not isinstance(resolved, str) or not resolved:
            raise StepFailed(
                f"step {step.name!r}, inputs.{name}: {value} is {resolved!r}, not a path or URI"
            )
        inputs[name] = _readable(ctx, step, resolved)
    data["inputs"] = inputs
    return validate_spec(TrainingJob, data, f"job of step {step.name!r}")


def _readable(ctx: Context, step: Step, uri: str) -> str:
    """``uri`` where the step's provider can read it (a copy from another provider's store)."""
    if ctx.home is None:
        return uri
    from mlcloud.pipelines import artifacts

    kind = api.resolve_profile(ctx.provider_of(step)).type
    profiles = [ctx.provider_of(s) for s in ctx.pipeline.steps]  # one wrote an azureml:// URI
    return artifacts.for_provider(kind, uri, ctx.home, profiles)


def digest_of(kind: str, payload: Any) -> str:
    canonical = json.dumps({"kind": kind, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_digest(spec: TrainingJob, provider: str | None, home: Path) -> str:
    """The spec, the provider and the content of its source and local inputs."""
    content = {
        name: tree_digest(uri, home)
        for name, uri in sorted({"__source__": spec.source, **spec.inputs}.items())
    }
    return digest_of(
        "job", {"spec": spec.model_dump(mode="json"), "provider": provider, "content": content}
    )


_SKIP_DIRS = frozenset({".git", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})


def tree_digest(uri: str, home: Path) -> str | None:
    """:func:`mlcloud.datadigest.digest` of a file or directory, leaving out what does not
    change a job (caches, .git) and the store's own home: reading the state database through
    another descriptor would drop this process's SQLite locks (sensitive.private_database)."""
    if datadigest.is_remote(uri):
        return f"uri:{uri}"
    root = Path(uri.removeprefix("file://")).expanduser().resolve()
    if not root.is_dir():
        return str(datadigest.digest(str(root))["digest"])
    skip = home.resolve()
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and here / d != skip)
        for name in sorted(files):
            full = here / name
            with full.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            h.update(f"{full.relative_to(root).as_posix()}\0{digest}\n".encode())
    return h.hexdigest()


def job_outputs(record: JobRecord) -> dict[str, Any]:
    from mlcloud import tracking

    tracked = tracking.job_metrics(record)
    model = record.outputs.get("model_dir")
    if model and not datadigest.is_remote(model) and not _exists(model):
        model = None  # the job saved no model (an evaluation)
    return {
        "job": record.id,
        "provider": record.provider,
        "model": model,
        "output": record.outputs.get("output_dir"),
        "outputs": dict(record.outputs),
        "metrics": tracked["metrics"],
        "params": tracked["params"],
    }


def run_job(ctx: Context, step: Step, row: db.StepRow, store: Store) -> dict[str, Any]:
    """Adopt the job the step already sent, or plan it, record its id, send it; wait."""
    handle: api.Job | None = None
    if row.job_id:
        try:
            handle = api.job(row.job_id)
        except NotFoundLocally:
            handle = None  # recorded, never sent (killed in between): send it now
    if handle is None:
        spec = job_spec(ctx, step)
        prov = api.get_provider(ctx.provider_of(step))
        planned = prov.plan_job(spec)
        db.update_step(store, ctx.run_id, step.name, job_id=planned.id, provider=prov.name)
        handle = api.Job(prov, prov.submit_job(planned))
    record = _wait(ctx, handle)
    if record.state is not JobState.SUCCEEDED:
        detail = f": {record.message}" if record.message else ""
        code = f" (exit {record.exit_code})" if record.exit_code is not None else ""
        raise StepFailed(
            f"job {record.id} {record.state}{code}{detail}",
            hint=f"its log: mlcloud logs {record.id}",
        )
    return job_outputs(record)


def _wait(ctx: Context, handle: api.Job) -> JobRecord:
    while not handle.advance().state.terminal:
        if ctx.cancelled():
            return handle.cancel()
        time.sleep(POLL_S)
    return handle.record


def job_cache_valid(outputs: dict[str, Any]) -> bool:
    """A cached job is reused while its record says SUCCEEDED and its local model dir is there."""
    try:
        record = api.job(str(outputs.get("job"))).record
    except MlcloudError:
        return False
    model = outputs.get("model")
    if model and not datadigest.is_remote(model) and not _exists(model):
        return False  # its model was deleted
    return record.state is JobState.SUCCEEDED


def _exists(local: str) -> bool:
    return Path(local.removeprefix("file://")).exists()


# ---- conditions --------------------------------------------------------------------------------
def run_condition(ctx: Context, step: Step) -> tuple[bool, str]:
    """(value, the message showing each name read and its value)."""
    parsed = expr.parse(str(step.condition))
    namespaces = {"params": ctx.params, **ctx.outputs}
    lookup = expr.lookup_in(namespaces)
    try:
        value = bool(expr.evaluate(parsed, lookup))
    except expr.ExprError as e:
        raise StepFailed(
            f"condition {step.condition!r}: {e}",
            hint="a metric comes from runtime.log_metrics in the upstream job",
        ) from None
    seen = ", ".join(f"{'.'.join(r)}={lookup(r)!r}" for r in dict.fromkeys(parsed.refs))
    return value, f"{'true' if value else 'false'}: {step.condition} ({seen})"


# ---- registry and deployment -----------------------------------------------------------------
def register_source(ctx: Context, step: Step) -> str:
    """An upstream job's model registers as that job (its lineage and metrics come along)."""
    assert step.register_ is not None
    m = _REF.match(step.register_.model)
    if m is not None and m.group(1) in ctx.outputs and m.group(2) == "model":
        job = ctx.outputs[m.group(1)].get("job")
        if job:
            return str(job)
    value = reference(ctx, step.register_.model)
    if not isinstance(value, str):
        raise StepFailed(f"register.model {step.register_.model} is {value!r}, not a model")
    return value


def run_register(ctx: Context, step: Step, source: str, store: Store) -> dict[str, Any]:
    """Register ``source``; a version already registered from it (a runner killed after the
    registration, a re-run without the cache) is reused, its alias moved if it must be."""
    spec = step.register_
    assert spec is not None
    reason = f"pipeline {ctx.pipeline.name}, run {ctx.run_id}, step {step.name}"
    version = _registered(store, spec.name, source)
    if version is None:
        version = api.register_model(
            source, spec.name, alias=spec.alias, provider=step.provider, reason=reason
        )
    elif spec.alias and models_db.aliases_of(store, spec.name).get(spec.alias) != version.version:
        api.move_alias(spec.name, spec.alias, version.version, reason=reason)
    return {
        "ref": version.ref,
        "name": version.name,
        "version": version.version,
        "uri": version.uri,
    }


def _registered(store: Store, name: str, source: str) -> ModelVersionRecord | None:
    try:
        versions = models_db.versions_of(store, name)
    except NotFoundLocally:
        return None
    return next((v for v in versions if source in (v.source_job, v.uri)), None)


def register_cache_valid(outputs: dict[str, Any], store: Store) -> bool:
    try:
        model_registry.resolve(store, str(outputs.get("ref")))
    except MlcloudError:
        return False
    return True


def deploy_model(ctx: Context, step: Step, store: Store) -> tuple[str, str | None]:
    """(the model to deploy, the content it names: a version's digest or the model's URI)."""
    assert step.deploy is not None
    value = reference(ctx, step.deploy.model)
    if not isinstance(value, str):
        raise StepFailed(f"deploy.model {step.deploy.model} is {value!r}, not a model")
    if model_registry.looks_like_ref(value):
        version = model_registry.resolve(store, value)
        copied = _readable(ctx, step, version.uri)  # a model registered on another provider
        return (value if copied == version.uri else copied), version.sha256 or version.uri
    return _readable(ctx, step, value), value


def run_deploy(ctx: Context, step: Step, model: str) -> dict[str, Any]:
    """A canary rollout when asked and the endpoint already serves something; else a deploy
    (a first deploy has nothing to be a canary of)."""
    from mlcloud.units import parse_duration

    assert step.deploy is not None
    spec, provider = step.deploy, ctx.provider_of(step)
    if spec.canary is not None and _serving(spec.endpoint, provider):
        from mlcloud import rollouts
        from mlcloud.store import rollouts as rollouts_db

        prov = api.get_provider(provider)
        active = rollouts_db.active_for(prov.store, spec.endpoint, prov.name)
        if active is not None and active.model == model:  # started before a runner was killed
            return {"endpoint": spec.endpoint, "url": None, "rollout": f"r-{active.id}",
                    "model": model}  # fmt: skip
        row = rollouts.start(
            model, spec.endpoint, provider, spec.canary, float(parse_duration(spec.bake)), spec.gate
        )
        return {"endpoint": spec.endpoint, "url": None, "rollout": f"r-{row.id}", "model": model}
    endpoint = api.deploy(model, spec.endpoint, provider)
    return {"endpoint": endpoint.name, "url": endpoint.url, "rollout": None, "model": model}


def _serving(name: str, provider: str | None) -> bool:
    try:
        record = api.endpoint(name, provider).record
    except MlcloudError:
        return False
    return str(record.state) == "READY"


def deploy_cache_valid(outputs: dict[str, Any], content: str | None, provider: str | None) -> bool:
    """Reused while the endpoint still serves what was deployed."""
    try:
        record = api.endpoint(str(outputs.get("endpoint")), provider).record
    except MlcloudError:
        return False
    return str(record.state) == "READY" and content in (record.model_sha256, record.model)
