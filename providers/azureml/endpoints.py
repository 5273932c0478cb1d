"""Managed online endpoints: deploy a plan (blue/green), status, predict, undeploy.

``deploy`` carries out ``endpoint_plan.plan_deploy``'s steps in order: the model version
(content-addressed, so an existing one is reused), the endpoint (created when missing), the
deployment beside the old ones, the mirrored share for ``mirror_seconds`` when configured, the
traffic switch, then the deletion of deployments left without traffic. ``set_traffic`` sends
``endpoint_plan.plan_traffic``'s steps the same way. Every long-running operation is waited for
(azure-core polls the status URL).

Retries: azure-core's pipeline retry policy is the only retry owner; mlcloud repeats no write.
Each is safe to send again: model versions are content-addressed (an existing one is reused),
the endpoint PUT sets an absolute traffic map, and deleting a deployment already gone is a no-op.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mlcloud.errors import NotFound, NotFoundLocally, ProviderError, SpecError
from mlcloud.records import EndpointRecord, EndpointState, Plan
from providers.azureml import endpoint_plan
from providers.azureml.clients import sdk_output_to_stderr
from providers.common.traffic import record_split, version_of

if TYPE_CHECKING:
    from azure.ai.ml.entities import ManagedOnlineEndpoint, Model
    from azure.core.polling import LROPoller

    from mlcloud.specs import Deployment
    from providers.azureml.provider import AzureMLProvider

T = TypeVar("T")
STATES = {
    "Succeeded": EndpointState.READY,
    "Creating": EndpointState.CREATING,
    "Updating": EndpointState.UPDATING,
    "Deleting": EndpointState.UPDATING,
    "Failed": EndpointState.FAILED,
    "Canceled": EndpointState.FAILED,
}


def _state(provisioning: object) -> EndpointState:
    return STATES.get(str(getattr(provisioning, "value", provisioning)), EndpointState.UPDATING)


def _wait(start: Callable[..., LROPoller[T]], *args: object, **kwargs: object) -> T:
    """Start a long-running operation and wait for it (azure-core polls the status URL)."""
    with sdk_output_to_stderr():
        return start(*args, **kwargs).result()


# ---- deploy: the plan's steps, in order ----------------------------------------------------
def _register_model(
    provider: AzureMLProvider, spec: Deployment, chosen: endpoint_plan.ModelChoice, model: Model
) -> str:
    """The model version's id; registered (and uploaded) unless it exists. Versions are
    content-addressed and immutable, so an existing one is the same model."""
    ml = provider.clients.ml
    try:
        with provider.mapped():
            registered = ml.models.get(name=str(model.name), version=str(model.version))
        return str(registered.id)
    except NotFound:
        pass
    with provider.mapped(), sdk_output_to_stderr():
        registered = ml.models.create_or_update(model)  # uploads a local model dir
    # lineage: endpoint <- model version <- job
    provider.store.add_model_version(
        spec.name,
        registered.id or endpoint_plan.model_id(model),
        sha256=chosen.sha256,
        framework=chosen.framework,
        source_job=spec.source_job,
        details={"provider": provider.name, "azureml_version": registered.version},
    )
    return str(registered.id)


def _ensure_endpoint(
    provider: AzureMLProvider, endpoint: ManagedOnlineEndpoint
) -> ManagedOnlineEndpoint:
    """The live endpoint, created when the workspace has none of that name."""
    ml = provider.clients.ml
    try:
        with provider.mapped():
            live: ManagedOnlineEndpoint = ml.online_endpoints.get(str(endpoint.name))
        return live
    except NotFound:
        created: ManagedOnlineEndpoint = _wait(ml.online_endpoints.begin_create_or_update, endpoint)
        return created


def _old_deployments(provider: AzureMLProvider, live: ManagedOnlineEndpoint, new: str) -> list[str]:
    """The endpoint's other deployments: those taking traffic, then any other one."""
    ml = provider.clients.ml
    old = [d for d in (live.traffic or {}) if d != new]
    listed = [str(d.name) for d in ml.online_deployments.list(endpoint_name=str(live.name))]
    return old + [d for d in listed if d != new and d not in old]


def _shift_traffic(
    provider: AzureMLProvider,
    live: ManagedOnlineEndpoint,
    new: str,
    split: dict[str, int],
    old: list[str],
) -> ManagedOnlineEndpoint:
    """Mirror a share of live traffic to ``new`` for a while (when configured), then switch."""
    ml = provider.clients.ml
    mirror = provider.settings.mirror_traffic
    if mirror and old:
        live.mirror_traffic = {new: mirror}
        live = _wait(ml.online_endpoints.begin_create_or_update, live)
        time.sleep(provider.settings.mirror_seconds)
    live.traffic = split
    live.mirror_traffic = {}
    switched: ManagedOnlineEndpoint = _wait(ml.online_endpoints.begin_create_or_update, live)
    return switched


def _delete_unused(
    provider: AzureMLProvider, name: str, old: list[str], split: dict[str, int]
) -> None:
    ml = provider.clients.ml
    for deployment in old:
        if deployment not in split:
            with contextlib.suppress(NotFound), provider.mapped():  # already gone
                _wait(ml.online_deployments.begin_delete, name=deployment, endpoint_name=name)


def deploy(provider: AzureMLProvider, plan: Plan[Deployment]) -> EndpointRecord:
    spec = plan.spec
    context: endpoint_plan.DeployContext = plan.context_as(endpoint_plan.DeployContext)
    built = endpoint_plan.entities(provider, spec)
    online, model = built.online, built.model.model
    if online.name != context.deployment:
        raise SpecError(
            f"plan {plan.id} is stale: it deploys {context.deployment}, but the model or the "
            f"settings changed since (now {online.name})",
            hint="plan it again",
        )
    if not isinstance(model, str):
        online.model = _register_model(provider, spec, built.model, model)
    live = _ensure_endpoint(provider, built.endpoint)
    _wait(provider.clients.ml.online_deployments.begin_create_or_update, online)
    new = str(online.name)
    split = context.split
    old = _old_deployments(provider, live, new)
    live = _shift_traffic(provider, live, new, split, old)
    _delete_unused(provider, spec.name, old, split)
    known = _stored_or_none(provider, spec.name)
    versions = dict((known.details.get("versions") or {}) if known else {})
    for deployment in split:
        versions.setdefault(deployment, version_of(known))
    record = EndpointRecord(
        name=spec.name,
        provider=provider.name,
        type=provider.type,
        state=_state(live.provisioning_state),
        url=live.scoring_uri,
        model=str(online.model if isinstance(online.model, str) else endpoint_plan.model_id(model)),
        model_sha256=built.model.sha256,
        source_job=spec.source_job,
        native_id=live.id,
        details={"deployments": dict(split), "deployment": new},
        spec=spec.model_dump(mode="json"),
    )
    versions[new] = {"model": record.model, "sha256": record.model_sha256}
    record_split(record, _traffic_of(live), versions, newest=new)
    return provider.store.put_endpoint(record)


def _traffic_of(live: ManagedOnlineEndpoint) -> dict[str, int]:
    return {str(d): int(pct) for d, pct in (live.traffic or {}).items()}


def _stored_or_none(provider: AzureMLProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


# ---- traffic between deployments -------------------------------------------------------------
def set_traffic(
    provider: AzureMLProvider, record: EndpointRecord, weights: dict[str, int]
) -> EndpointRecord:
    """Send ``plan_traffic``'s steps in order: the endpoint's traffic, then the deletions."""
    plan = endpoint_plan.plan_traffic(provider, record, weights)
    ml = provider.clients.ml
    live = ml.online_endpoints.get(record.name)
    for step in plan.steps:
        if step.call == endpoint_plan.UPDATE_ENDPOINT:
            live.traffic = dict(step.request["traffic"])
            live.mirror_traffic = dict(step.request["mirrorTraffic"])
            live = _wait(ml.online_endpoints.begin_create_or_update, live)
        else:
            name = str(step.request["name"])
            with contextlib.suppress(NotFound), provider.mapped():  # already gone
                _wait(ml.online_deployments.begin_delete, name=name, endpoint_name=record.name)
    record.state = _state(live.provisioning_state)
    record.details["deployments"] = _traffic_of(live)
    record_split(record, _traffic_of(live), record.details.get("versions") or {})
    return provider.store.put_endpoint(record)


# ---- status / predict / undeploy -------------------------------------------------------------
def status(provider: AzureMLProvider, name: str) -> EndpointRecord:
    record = provider.store.get_endpoint(name, provider=provider.name)
    try:
        with provider.mapped():
            live = provider.clients.ml.online_endpoints.get(name)
    except NotFound:
        record.state = EndpointState.DELETED
        record.message = "the endpoint no longer exists in the workspace"
        return provider.store.put_endpoint(record)
    record.state = _state(live.provisioning_state)
    record.url = live.scoring_uri
    record.details = {**record.details, "deployments": dict(live.traffic or {})}
    record_split(record, _traffic_of(live), record.details.get("versions") or {})
    return provider.store.put_endpoint(record)


def predict(provider: AzureMLProvider, name: str, payload: Any) -> Any:
    """POST ``{"instances": [...]}`` to the scoring URI with the endpoint key (``invoke``)."""
    provider.store.get_endpoint(name, provider=provider.name)  # a clear error for unknown names
    body = payload if isinstance(payload, dict) else {"instances": payload}
    # invoke() reads the request from a file; a private temp file, removed right after.
    fd, path = tempfile.mkstemp(prefix="mlcloud-azureml-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(body, fh)
        text = provider.clients.ml.online_endpoints.invoke(endpoint_name=name, request_file=path)
    finally:
        os.unlink(path)
    try:
        result = json.loads(text)
        # Some scoring stacks return the JSON document as a JSON string.
        return json.loads(result) if isinstance(result, str) else result
    except ValueError:
        raise provider.origin.error(
            ProviderError,
            f"endpoint {name!r} answered with something that is not JSON: {str(text)[:200]!r}",
            code="InvalidResponse",
        ) from None


def undeploy(provider: AzureMLProvider, name: str) -> EndpointRecord | None:
    try:
        record: EndpointRecord | None = provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        record = None
    with contextlib.suppress(NotFound), provider.mapped():  # idempotent: already gone
        _wait(provider.clients.ml.online_endpoints.begin_delete, name=name)
    if record is None:
        return None
    provider.store.delete_endpoint(name, provider.name)
    record.state = EndpointState.DELETED
    return record
