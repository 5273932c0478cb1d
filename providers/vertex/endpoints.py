"""Deployments as Vertex endpoints: send a plan (upload a model version, deploy it, shift traffic,
undeploy what is left without traffic), read an endpoint's state, predict, undeploy.

The plan is made by ``endpoint_plan``; the provider's template methods call these inside its
error mapping, so code here catches mlcloud errors (``NotFound``, ``Conflict``), never the SDK's.
Long-running operations are waited for with ``providers.common.waiting.wait_until``.

Retries: the GAPIC clients' own retry settings (reads: ``read_retry``) are the only retry owner;
mlcloud repeats no write. Each write is safe to send again: uploads are looked up by alias first,
a create of an existing endpoint is success, UpdateEndpoint sets an absolute split, and
undeploying a model already gone is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from mlcloud.errors import Conflict, NotFound, NotFoundLocally, ProviderError, SpecError
from mlcloud.records import EndpointRecord, EndpointState, Plan
from providers.common.traffic import record_split, version_of
from providers.common.waiting import wait_until
from providers.vertex import gcs
from providers.vertex.endpoint_plan import (
    CREATE,
    DEPLOY,
    UNDEPLOY,
    UPDATE,
    UPLOAD,
    ModelSource,
    TrafficContext,
    VertexDeployContext,
    existing_endpoint,
    plan_traffic,
)
from providers.vertex.errors import read_retry

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.aiplatform_v1 import Endpoint

    from mlcloud.specs import Deployment
    from providers.vertex.provider import VertexProvider

CALL_TIMEOUT = 60.0
OPERATION_POLL = 5.0  # seconds between looks at a long-running operation (deploys take minutes)

Request = Mapping[str, Any]


class Operation(Protocol):
    """What mlcloud calls of ``google.api_core.operation.Operation`` (unannotated there)."""

    def done(self, retry: Retry | None = None) -> bool: ...
    def result(self) -> object: ...


class Prediction(TypedDict):
    predictions: list[Any]
    deployed_model_id: str | None
    model_version_id: str | None


# ---- deploy ----------------------------------------------------------------------------------
def deploy(provider: VertexProvider, plan: Plan[Deployment]) -> EndpointRecord:
    """Stage the model files, send each planned call in order, then record what serves."""
    context: VertexDeployContext = plan.context_as(VertexDeployContext)
    unknown = [step.call for step in plan.steps if step.call not in _SEND]
    if unknown:
        raise SpecError(f"plan {plan.id}: calls this provider does not make: {unknown}")
    staged = _stage_model(provider, context.source)
    newest = None
    for step in plan.steps:
        result = _SEND[step.call](provider, step.request, context)
        if step.call == DEPLOY:
            newest = _deployed_id(provider, result)
    record = _deployed_record(provider, plan.spec, context, newest)
    if plan.steps:
        _register_version(provider, plan.spec, context, staged)
    return record


def _deployed_id(provider: VertexProvider, result: object) -> str:
    """The deployedModelId in DeployModel's result (the operation's unpacked response)."""
    from google.cloud.aiplatform_v1 import DeployModelResponse

    if not isinstance(result, DeployModelResponse) or not result.deployed_model.id:
        raise provider.origin.error(
            ProviderError, f"DeployModel answered without a deployed model id: {result!r}"
        )
    return str(result.deployed_model.id)


def _stage_model(provider: VertexProvider, source: ModelSource) -> int:
    if source.prefix is None:
        return 0  # a gs:// model: nothing to upload
    return gcs.put_files_if_absent(provider, source.files, source.prefix)


def _upload(provider: VertexProvider, request: Request, context: VertexDeployContext) -> object:
    """UploadModel, unless the version is already there (a retried or repeated deploy)."""
    from google.cloud import aiplatform_v1

    models = provider.clients.models
    try:
        with provider.mapped():
            models.get_model(name=context.version, retry=read_retry(), timeout=30.0)
        return None
    except NotFound:
        pass
    proto = aiplatform_v1.UploadModelRequest.from_json(json.dumps(request))
    try:
        with provider.mapped():
            operation = models.upload_model(request=proto, timeout=CALL_TIMEOUT)
    except Conflict:
        if not proto.model_id:
            raise
        # the model exists (this store never saw it): add a version to it instead
        proto.parent_model = f"{proto.parent}/models/{proto.model_id}"
        proto.model_id = ""
        operation = models.upload_model(request=proto, timeout=CALL_TIMEOUT)
    return _wait(provider, operation, "the model upload")


def _create(provider: VertexProvider, request: Request, context: VertexDeployContext) -> object:
    from google.cloud import aiplatform_v1

    proto = aiplatform_v1.CreateEndpointRequest.from_json(json.dumps(request))
    try:
        with provider.mapped():
            operation = provider.clients.endpoints.create_endpoint(request=proto)
            return _wait(provider, operation, "the endpoint")
    except Conflict:
        return None  # endpoint ids are the deployment name: it is already there


def _deploy(provider: VertexProvider, request: Request, context: object) -> object:
    """DeployModel; its result names the new deployedModelId (the version id)."""
    from google.cloud import aiplatform_v1

    proto = aiplatform_v1.DeployModelRequest.from_json(json.dumps(request))
    operation = provider.clients.endpoints.deploy_model(request=proto)
    return _wait(provider, operation, "the model deployment")


def _undeploy(provider: VertexProvider, request: Request, context: object) -> object:
    split = request.get("trafficSplit")
    _undeploy_one(provider, request["endpoint"], request["deployedModelId"], split)
    return None


def _update(provider: VertexProvider, request: Request, context: object) -> object:
    """UpdateEndpoint (synchronous in v1): the traffic split, or the request-response log."""
    from google.cloud import aiplatform_v1

    proto = aiplatform_v1.UpdateEndpointRequest.from_json(json.dumps(request))
    return provider.clients.endpoints.update_endpoint(request=proto, timeout=CALL_TIMEOUT)


_SEND: dict[str, Callable[[VertexProvider, Request, VertexDeployContext], object]] = {
    UPLOAD: _upload,
    CREATE: _create,
    DEPLOY: _deploy,
    UNDEPLOY: _undeploy,
    UPDATE: _update,  # the request-response log of an existing endpoint (capture.py)
}


def _undeploy_one(
    provider: VertexProvider,
    endpoint: str,
    deployed_model_id: str,
    split: Mapping[str, int] | None = None,
) -> None:
    request: dict[str, object] = {"endpoint": endpoint, "deployed_model_id": deployed_model_id}
    if split is not None:
        request["traffic_split"] = dict(split)
    try:
        with provider.mapped():
            operation = provider.clients.endpoints.undeploy_model(request=request)
            _wait(provider, operation, f"the undeployment of {deployed_model_id}")
    except NotFound:
        pass  # already gone


def _wait(provider: VertexProvider, operation: Operation, what: str) -> object:
    """Wait for a long-running operation; its result, or its error raised."""
    wait_until(
        lambda: operation.done(retry=read_retry()),
        bool,
        timeout=provider.settings.operation_timeout,
        poll=OPERATION_POLL,
        what=what,
        origin=provider.origin,
    )
    return operation.result()


def _register_version(
    provider: VertexProvider, d: Deployment, context: VertexDeployContext, staged: int
) -> None:
    """Lineage in the local model registry: endpoint <- Vertex model version <- job."""
    model = provider.clients.models.get_model(name=context.version, retry=read_retry())
    provider.store.add_model_version(
        d.name,
        context.source.uri,
        sha256=context.source.digest,
        framework=context.source.framework,
        source_job=d.source_job,
        details={
            "provider": provider.name,
            "vertex_model": model.name,
            "version_id": model.version_id,
            "staged_bytes": staged,
        },
    )


# ---- status ----------------------------------------------------------------------------------
def status(provider: VertexProvider, name: str) -> EndpointRecord:
    existing = existing_endpoint(provider, name)
    if existing is None or not existing.native_id:
        raise NotFoundLocally(f"no vertex endpoint {name!r} in profile {provider.name!r}")
    try:
        endpoint = _get_endpoint(provider, existing.native_id)
    except NotFound:
        existing.state = EndpointState.DELETED
        existing.message = f"{existing.native_id} no longer exists in Vertex AI"
        existing.details["deployed_models"] = {}
        return provider.store.put_endpoint(existing)
    return _put_record(provider, existing, endpoint)


def _deployed_record(
    provider: VertexProvider, d: Deployment, context: VertexDeployContext, newest: str | None
) -> EndpointRecord:
    """The record of an endpoint this plan just deployed (it must exist now); ``newest``: the
    deployedModelId DeployModel made (None: the plan sent nothing, the version serves)."""
    existing = existing_endpoint(provider, d.name)
    record = existing or EndpointRecord(
        name=d.name, provider=provider.name, type=provider.type, state=EndpointState.CREATING
    )
    versions = dict(record.details.get("versions") or {})
    for dm in record.details.get("deployed_models") or {}:
        versions.setdefault(dm, version_of(existing))
    if newest is not None:
        versions[newest] = {"model": context.source.uri, "sha256": context.source.digest}
        record.details["newest"] = newest
    record.details["versions"] = versions
    endpoint = _get_endpoint(provider, context.endpoint)
    record.source_job = d.source_job
    record.spec = d.model_dump(mode="json")
    record.details["alias"] = context.alias
    record.details["model"] = context.model
    return _put_record(provider, record, endpoint)


# ---- traffic between deployed models ---------------------------------------------------------
def set_traffic(
    provider: VertexProvider, record: EndpointRecord, weights: dict[str, int]
) -> EndpointRecord:
    """Send ``plan_traffic``'s steps in order, then record the split Vertex now applies."""
    plan = plan_traffic(provider, record, weights)
    context = plan.context_as(TrafficContext)
    send = {UPDATE: _update, UNDEPLOY: _undeploy}
    for step in plan.steps:
        send[step.call](provider, step.request, context)
    return _put_record(provider, record, _get_endpoint(provider, context.endpoint))


def _put_record(
    provider: VertexProvider, record: EndpointRecord, endpoint: Endpoint
) -> EndpointRecord:
    deployed = {dm.id: dm.model for dm in endpoint.deployed_models}
    record.native_id = endpoint.name
    record.state = EndpointState.READY if deployed else EndpointState.CREATING
    host = provider.clients.api_endpoint
    record.url = f"{host if '://' in host else 'https://' + host}/v1/{endpoint.name}:predict"
    record.details.update({"endpoint": endpoint.name, "deployed_models": deployed})
    # every deployed model is a version serving, those without a share at 0
    split = {dm: int(endpoint.traffic_split.get(dm, 0)) for dm in deployed}
    record_split(record, split, record.details.get("versions") or {})
    return provider.store.put_endpoint(record)


def _get_endpoint(provider: VertexProvider, name: str) -> Endpoint:
    with provider.mapped():
        return provider.clients.endpoints.get_endpoint(
            name=name, retry=read_retry(), timeout=CALL_TIMEOUT
        )


# ---- predict, undeploy -----------------------------------------------------------------------
def predict(provider: VertexProvider, name: str, payload: Any) -> Prediction:
    from google.cloud import aiplatform_v1

    record = provider.store.get_endpoint(name, provider=provider.name)
    instances = payload.get("instances") if isinstance(payload, dict) else payload
    if not isinstance(instances, list) or not instances:
        raise SpecError(
            'predict payload: expected {"instances": [...]} with at least one instance',
            hint='e.g. {"instances": [[5.1, 3.5, 1.4, 0.2]]}',
        )
    request: dict[str, object] = {"endpoint": record.native_id, "instances": instances}
    if isinstance(payload, dict) and "parameters" in payload:
        request["parameters"] = payload["parameters"]
    proto = aiplatform_v1.PredictRequest.from_json(json.dumps(request))
    response = provider.clients.prediction.predict(request=proto, timeout=CALL_TIMEOUT)
    data = type(response).to_dict(response)
    return {
        "predictions": data.get("predictions", []),
        "deployed_model_id": data.get("deployed_model_id"),
        "model_version_id": data.get("model_version_id"),
    }


def undeploy(provider: VertexProvider, name: str) -> EndpointRecord | None:
    """Undeploy every model and delete the endpoint; a missing endpoint is not an error."""
    existing = existing_endpoint(provider, name)
    if existing is None:
        return None
    native = existing.native_id or f"{provider.settings.parent}/endpoints/{name}"
    try:
        endpoint: Endpoint | None = _get_endpoint(provider, native)
    except NotFound:
        endpoint = None
    if endpoint is not None:
        # least traffic first, each undeploy handing all traffic to the last one left (Vertex
        # refuses to undeploy a model that still has traffic unless the request reassigns it)
        models = sorted(endpoint.deployed_models, key=lambda m: endpoint.traffic_split.get(m.id, 0))
        for i, dm in enumerate(models):
            rest = models[i + 1 :]
            _undeploy_one(provider, native, dm.id, {rest[-1].id: 100} if rest else None)
        try:
            with provider.mapped():
                operation = provider.clients.endpoints.delete_endpoint(name=native)
                _wait(provider, operation, f"the deletion of {native}")
        except NotFound:
            pass
    provider.store.delete_endpoint(name, provider.name)
    existing.state = EndpointState.DELETED
    existing.details["deployed_models"] = {}
    return existing
