"""Real-time endpoints: deploy a plan (CreateModel/CreateEndpointConfig, then CreateEndpoint or a
blue/green UpdateEndpoint, Application Auto Scaling target tracking), InvokeEndpoint, traffic
splits between variants (``set_traffic``), and clean removal. Planning is ``endpoint_plan.py``;
this module has the side effects.

Retries: botocore's standard retry mode is the only retry owner here. Every write is safe to
repeat: creates are content-named ("already exists" is success), UpdateEndpoint and
UpdateEndpointWeightsAndCapacities set absolute states, deletes of what is gone are no-ops.

Every function runs inside the provider's error mapping; where an outcome decides what happens
next (``NotFound``: already gone; ``Conflict``: already exists) the SDK call is wrapped in
``provider.mapped()`` and the mlcloud class is caught.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, TypedDict

from mlcloud.errors import Conflict, NotFound, NotFoundLocally, ProviderError, SpecError
from mlcloud.records import EndpointRecord, EndpointState, Plan
from mlcloud.specs import Deployment
from providers.common.traffic import percentages, record_split, version_of
from providers.common.waiting import wait_until
from providers.sagemaker import s3, states
from providers.sagemaker.endpoint_plan import (
    DIMENSION,
    EndpointContext,
    TrafficContext,
    plan_traffic,
)

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider

MODEL_CONTENT_TYPE = "application/gzip"
# SageMaker refuses UpdateEndpoint in these states: the endpoint must be removed first.
_UNUPDATABLE = ("Failed", "OutOfService", "UpdateRollbackFailed", "Deleting")
_BROKEN = ("Failed", "OutOfService", "UpdateRollbackFailed")
_PAYLOAD_KEYS = {"instances", "parameters"}  # the serving image's request contract


class EndpointDescription(TypedDict, total=False):
    """The fields of ``DescribeEndpoint`` mlcloud reads."""

    EndpointName: str
    EndpointArn: str
    EndpointConfigName: str
    EndpointStatus: str
    FailureReason: str
    ProductionVariants: list[dict[str, Any]]


Steps = Mapping[str, Mapping[str, Any]]  # plan step call -> its request


# ---- deploy ----------------------------------------------------------------------------------
def deploy(provider: SageMakerProvider, plan: Plan[Deployment]) -> EndpointRecord:
    """Upload the model, create its model and config (idempotent: content-hashed names), create
    or switch the endpoint, wait until it serves, then scale, clean up and register."""
    ctx = plan.context_as(EndpointContext)
    dep = plan.spec
    steps: Steps = {s.call: s.request for s in plan.steps}
    if ctx.archive is not None and ctx.bucket and ctx.model_key:
        s3.put_if_missing(provider, ctx.bucket, ctx.model_key, ctx.archive.data, MODEL_CONTENT_TYPE)
    sm = provider.clients.sagemaker
    new_model = _create_if_absent(
        provider, lambda: sm.create_model(**steps["sagemaker.CreateModel"])
    )
    _create_if_absent(
        provider, lambda: sm.create_endpoint_config(**steps["sagemaker.CreateEndpointConfig"])
    )
    state, old_config = _create_or_switch(provider, dep, ctx, steps)
    provider.store.put_endpoint(_record(provider, plan, state, None, old_config))
    desc = _wait_in_service(provider, dep.name)
    if "application-autoscaling.RegisterScalableTarget" in steps:
        aas = provider.clients.autoscaling
        aas.register_scalable_target(**steps["application-autoscaling.RegisterScalableTarget"])
        aas.put_scaling_policy(**steps["application-autoscaling.PutScalingPolicy"])
    _clean_up(provider, plan, old_config)
    if new_model and "sagemaker.CreateModelPackage" in steps:
        _register(provider, plan, steps)
    return provider.store.put_endpoint(_record(provider, plan, EndpointState.READY, desc, None))


def _clean_up(provider: SageMakerProvider, plan: Plan[Deployment], old_config: str | None) -> None:
    """The planned removal of the config the switch replaced and of the models no variant
    serves any more; and of the config AWS actually served, when the store knew another."""
    sm = provider.clients.sagemaker
    deletes = {
        "sagemaker.DeleteEndpointConfig": sm.delete_endpoint_config,
        "sagemaker.DeleteModel": sm.delete_model,
    }
    planned = None
    for step in plan.steps:
        if step.call in deletes:
            _ignore_missing(provider, partial(deletes[step.call], **step.request))
            planned = step.request.get("EndpointConfigName") or planned
    if old_config and old_config != planned:
        keep = {str(v["ModelName"]) for v in plan.context_as(EndpointContext).variants}
        _delete_config_and_models(provider, old_config, keep_models=keep)


def _create_or_switch(
    provider: SageMakerProvider, dep: Deployment, ctx: EndpointContext, steps: Steps
) -> tuple[EndpointState, str | None]:
    """CreateEndpoint when AWS has none of this name; else UpdateEndpoint onto the new config
    (once it is InService: SageMaker refuses to update a Creating/Updating endpoint). Returns
    the state and the config being replaced (None: nothing to switch)."""
    sm = provider.clients.sagemaker
    current = _describe_or_none(provider, dep.name)
    if current is None:
        create = steps.get("sagemaker.CreateEndpoint") or {  # planned as an update, gone since
            "EndpointName": dep.name,
            "EndpointConfigName": ctx.config_name,
            "Tags": steps["sagemaker.CreateModel"]["Tags"],
        }
        sm.create_endpoint(**create)
        return EndpointState.CREATING, None
    status = current.get("EndpointStatus")
    if status in _UNUPDATABLE:
        raise provider.origin.error(
            Conflict,
            f"endpoint {dep.name} is {status}; SageMaker cannot update it",
            code=str(status),
            hint=f"remove it first: mlcloud undeploy {dep.name}",
        )
    if status != "InService":
        current = _wait_in_service(provider, dep.name)
    old_config = current["EndpointConfigName"]
    if old_config == ctx.config_name:
        return EndpointState.UPDATING, None  # same version already serving
    # Autoscaling is re-registered after the switch (AWS wants it off during it).
    _deregister_scaling(provider, dep.name)
    sm.update_endpoint(EndpointName=dep.name, EndpointConfigName=ctx.config_name)
    return EndpointState.UPDATING, old_config


def _register(provider: SageMakerProvider, plan: Plan[Deployment], steps: Steps) -> None:
    """A new model package version, and its lineage in the store."""
    ctx = plan.context_as(EndpointContext)
    sm = provider.clients.sagemaker
    _create_if_absent(
        provider,
        lambda: sm.create_model_package_group(**steps["sagemaker.CreateModelPackageGroup"]),
    )
    arn = sm.create_model_package(**steps["sagemaker.CreateModelPackage"])["ModelPackageArn"]
    provider.store.add_model_version(
        plan.spec.name,
        ctx.model_url,
        sha256=ctx.sha256,
        framework=ctx.framework,
        source_job=plan.spec.source_job,
        details={"model_package_arn": arn, "provider": provider.name},
    )


def _record(
    provider: SageMakerProvider,
    plan: Plan[Deployment],
    state: EndpointState,
    desc: EndpointDescription | None,
    old_config: str | None,
) -> EndpointRecord:
    ctx = plan.context_as(EndpointContext)
    dep = plan.spec
    details: dict[str, Any] = {
        "endpoint_config": ctx.config_name,
        "model_name": ctx.model_name,
        "model_url": ctx.model_url,
        "instance_type": ctx.instance_type,
        "region": ctx.region,
        "variants": {
            str(v["VariantName"]): {k: x for k, x in v.items() if k != "InitialVariantWeight"}
            for v in ctx.variants
        },
    }
    if old_config:
        details["previous_config"] = old_config
    if desc:
        details["status"] = desc.get("EndpointStatus")
    known = _stored_or_none(provider, dep.name)
    versions = dict((known.details.get("versions") or {}) if known else {})
    for v in ctx.variants:
        versions.setdefault(str(v["VariantName"]), version_of(known))
    versions[ctx.variant] = {"model": dep.model, "sha256": ctx.sha256}
    planned = {str(v["VariantName"]): float(v["InitialVariantWeight"]) for v in ctx.variants}
    traffic = _traffic_of(desc) if desc else percentages(planned)
    record = EndpointRecord(
        name=dep.name,
        provider=provider.name,
        type=provider.type,
        state=state,
        url=f"https://runtime.sagemaker.{ctx.region}.amazonaws.com/endpoints/{dep.name}/invocations",
        model=dep.model,
        model_sha256=ctx.sha256,
        source_job=dep.source_job,
        native_id=(desc or {}).get("EndpointArn"),
        details=details,
        spec=dep.model_dump(mode="json"),
    )
    return record_split(record, traffic, versions, newest=ctx.variant)


def _traffic_of(desc: EndpointDescription) -> dict[str, int]:
    """The split in force: each variant's current weight, as percents."""
    variants = desc.get("ProductionVariants") or []
    # moto leaves CurrentWeight out of a variant created at weight 0
    return percentages(
        {str(v["VariantName"]): float(v.get("CurrentWeight", 0.0)) for v in variants}
    )


def _describe_or_none(provider: SageMakerProvider, name: str) -> EndpointDescription | None:
    try:
        with provider.mapped():
            desc: EndpointDescription = provider.clients.sagemaker.describe_endpoint(
                EndpointName=name
            )
    except NotFound:
        return None
    return desc


def _wait_in_service(provider: SageMakerProvider, name: str) -> EndpointDescription:
    sm = provider.clients.sagemaker

    def fetch() -> EndpointDescription:
        desc: EndpointDescription = sm.describe_endpoint(EndpointName=name)
        return desc

    def done(desc: EndpointDescription) -> bool:
        status = desc.get("EndpointStatus")
        if status in _BROKEN:
            raise provider.origin.error(
                ProviderError,
                f"endpoint {name} is {status}: {desc.get('FailureReason', '')}",
                code=status,
            )
        return status == "InService"

    settings = provider.settings
    return wait_until(
        fetch,
        done,
        timeout=settings.endpoint_wait_seconds,
        poll=settings.wait_poll_seconds,
        what=f"endpoint {name} to be InService",
        origin=provider.origin,
    )


# ---- status / predict ------------------------------------------------------------------------
def status(provider: SageMakerProvider, name: str) -> EndpointRecord:
    desc = _describe_or_none(provider, name)
    record = _stored_or_none(provider, name)
    if desc is None:
        raise provider.origin.error(NotFound, f"no SageMaker endpoint {name!r}", code="NotFound")
    if record is None:
        record = EndpointRecord(
            name=name, provider=provider.name, type=provider.type, state=EndpointState.CREATING
        )
    record.state = states.endpoint_state(desc.get("EndpointStatus"))
    record.native_id = desc.get("EndpointArn")
    record.message = desc.get("FailureReason")
    record.details = {**record.details, "status": desc.get("EndpointStatus")}
    if desc.get("ProductionVariants"):
        traffic = _traffic_of(desc)
        variants = record.details.get("variants") or {}
        record.details["variants"] = {v: x for v, x in variants.items() if v in traffic}
        record_split(record, traffic, record.details.get("versions") or {})
    return provider.store.put_endpoint(record)


# ---- traffic between variants ----------------------------------------------------------------
def set_traffic(
    provider: SageMakerProvider, record: EndpointRecord, weights: dict[str, int]
) -> EndpointRecord:
    """Send ``plan_traffic``'s steps in order, waiting for InService after the switch (and
    before it: SageMaker refuses to update an endpoint that is updating)."""
    plan = plan_traffic(provider, record, weights)
    ctx = plan.context_as(TrafficContext)
    sm = provider.clients.sagemaker
    desc = _wait_in_service(provider, record.name)
    for variant in ctx.retired:  # AWS refuses to drop a variant that still has a scaling target
        _deregister_scaling(provider, record.name, variant)
    for step in plan.steps:
        request = dict(step.request)
        operation = step.call.removeprefix("sagemaker.")
        if operation == "CreateEndpointConfig":
            _create_if_absent(provider, partial(sm.create_endpoint_config, **request))
        elif operation in ("DeleteEndpointConfig", "DeleteModel"):
            _ignore_missing(provider, partial(getattr(sm, _snake(operation)), **request))
        else:  # UpdateEndpoint / UpdateEndpointWeightsAndCapacities: absolute, repeatable
            getattr(sm, _snake(operation))(**request)
            desc = _wait_in_service(provider, record.name)
    variants = record.details.get("variants") or {}
    record.details["variants"] = {v: variants[v] for v in weights if v in variants}
    if plan.steps[0].call == "sagemaker.CreateEndpointConfig":
        record.details["endpoint_config"] = plan.steps[0].request["EndpointConfigName"]
    record.state = states.endpoint_state(desc.get("EndpointStatus"))
    record_split(record, _traffic_of(desc), record.details.get("versions") or {})
    return provider.store.put_endpoint(record)


def _snake(operation: str) -> str:
    """boto3's method name of an operation: ``UpdateEndpoint`` → ``update_endpoint``."""
    return "".join("_" + c.lower() if c.isupper() else c for c in operation).lstrip("_")


def predict(provider: SageMakerProvider, name: str, payload: object) -> object:
    """InvokeEndpoint with ``{"instances": [...]}`` (a bare list is wrapped). A payload the
    serving image would refuse is refused here, before anything is sent or billed."""
    body = payload if isinstance(payload, dict) else {"instances": payload}
    check_payload(body)
    resp = provider.clients.runtime.invoke_endpoint(
        EndpointName=name,
        ContentType="application/json",
        Accept="application/json",
        Body=json.dumps(body).encode(),
    )
    raw = resp["Body"].read()
    try:
        return json.loads(raw)
    except ValueError:
        raise provider.origin.error(
            ProviderError,
            f"endpoint {name} answered non-JSON ({resp.get('ContentType')}): {raw[:200]!r}",
            code="BadResponse",
        ) from None


def check_payload(body: Mapping[str, object]) -> None:
    """The serving image's request contract: ``{"instances": [row, ...]}`` with at least one
    row, optionally ``parameters``; nothing else."""
    hint = 'send {"instances": [[5.1, 3.5, 1.4, 0.2], ...]}, one entry per row'
    unknown = sorted(set(body) - _PAYLOAD_KEYS)
    if "instances" not in body or unknown:
        extra = f" (unknown: {', '.join(unknown)})" if unknown else ""
        raise SpecError(f'predict payload must be {{"instances": [...]}}{extra}', hint=hint)
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise SpecError("predict payload: 'instances' must be a non-empty list", hint=hint)


# ---- undeploy --------------------------------------------------------------------------------
def undeploy(provider: SageMakerProvider, name: str) -> EndpointRecord | None:
    """Remove scaling, the endpoint, every config it used and their models; ``None`` when
    neither AWS nor the store knew it."""
    record = _stored_or_none(provider, name)
    desc = _describe_or_none(provider, name)
    if desc is None and record is None:
        return None
    sm = provider.clients.sagemaker
    _deregister_scaling(provider, name)
    if desc is not None:
        _ignore_missing(provider, lambda: sm.delete_endpoint(EndpointName=name))
    for config in _configs_of(desc, record):
        _delete_config_and_models(provider, config, keep_models=set())
    model = record.details.get("model_name") if record is not None else None
    if model:
        _ignore_missing(provider, lambda: sm.delete_model(ModelName=model))
    provider.store.delete_endpoint(name, provider.name)
    gone = record or EndpointRecord(
        name=name, provider=provider.name, type=provider.type, state=EndpointState.DELETED
    )
    gone.state = EndpointState.DELETED
    return gone


def _configs_of(desc: EndpointDescription | None, record: EndpointRecord | None) -> list[str]:
    """The endpoint's current config, and those the store remembers (an interrupted switch)."""
    configs: list[str] = []
    if desc is not None:
        configs.append(desc["EndpointConfigName"])
    if record is not None:
        for key in ("endpoint_config", "previous_config"):
            value = record.details.get(key)
            if value and value not in configs:
                configs.append(value)
    return configs


def _delete_config_and_models(
    provider: SageMakerProvider, config: str, keep_models: set[str]
) -> None:
    sm = provider.clients.sagemaker
    models: list[str] = []
    try:
        with provider.mapped():
            desc = sm.describe_endpoint_config(EndpointConfigName=config)
        models = [v["ModelName"] for v in desc.get("ProductionVariants", [])]
    except NotFound:
        pass
    _ignore_missing(provider, lambda: sm.delete_endpoint_config(EndpointConfigName=config))
    for model in models:
        if model not in keep_models:
            _ignore_missing(provider, partial(sm.delete_model, ModelName=model))


def _deregister_scaling(provider: SageMakerProvider, name: str, variant: str = "") -> None:
    """Remove the scaling targets of the endpoint's variants (of one, when ``variant``)."""
    aas = provider.clients.autoscaling
    target = {"ServiceNamespace": "sagemaker", "ScalableDimension": DIMENSION}
    prefix = f"endpoint/{name}/variant/{variant}"
    pages = aas.get_paginator("describe_scalable_targets").paginate(**target)
    found = [t["ResourceId"] for page in pages for t in page.get("ScalableTargets") or []]
    for rid in found:
        if rid == prefix or (not variant and rid.startswith(prefix)):
            _ignore_missing(
                provider, partial(aas.deregister_scalable_target, ResourceId=rid, **target)
            )


# ---- small helpers ---------------------------------------------------------------------------
def _stored_or_none(provider: SageMakerProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


def _create_if_absent(provider: SageMakerProvider, call: Callable[[], object]) -> bool:
    """Run a create; "already exists" is success (names are content hashes). True if created."""
    try:
        with provider.mapped():
            call()
    except Conflict:
        return False
    return True


def _ignore_missing(provider: SageMakerProvider, call: Callable[[], object]) -> None:
    try:
        with provider.mapped():
            call()
    except NotFound:
        pass
