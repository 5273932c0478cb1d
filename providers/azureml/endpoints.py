"""Managed online endpoints: model asset versions, blue/green deployments, predict, undeploy.

One ``ManagedOnlineEndpoint`` per mlcloud endpoint (key auth) and one
``ManagedOnlineDeployment`` per served configuration, named by a hash of the model version and
the deployment settings, so re-deploying the same thing is a no-op update and anything else is
blue/green: the new deployment is created beside the old one at 0% traffic, optionally
receives a mirrored share of live traffic for ``mirror_seconds`` (shadow testing), then takes
the traffic (``Deployment.traffic`` may keep a canary split, ``"new"`` naming this plan's
deployment), and deployments left without traffic are deleted.

Autoscaling: managed online deployments scale through Azure Monitor autoscale settings, a
different resource provider that azure-ai-ml does not drive, so ``replicas: {min, max}`` with
min != max is refused at plan time with that hint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import ConfigError, NotFound, NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.provider import EndpointRecord, EndpointState, Plan, PlanStep
from mlcloud.specs import Deployment
from providers.azureml import machines
from providers.azureml.errors import mapped
from providers.azureml.plan import arm_id, environment_id

if TYPE_CHECKING:
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint, Model

    from providers.azureml import AzureMLProvider

ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
NEW = "new"  # the key of Deployment.traffic that names the deployment this plan creates
LOCATION = "<workspace location>"  # filled in by the SDK from the workspace at deploy time
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


# ---- the model -------------------------------------------------------------------------------
def _model(
    provider: AzureMLProvider, deployment: Deployment
) -> tuple[str | Model, str | None, str | None]:
    """(model reference or Model entity to register, sha256, framework)."""
    from azure.ai.ml.entities import Model

    ref = deployment.model
    stored = ref.startswith(("https://", "azureml://datastores/")) or "/datastores/" in ref
    if ref.startswith("azureml:") and not stored:
        return ref, None, None  # a registered asset: azureml:name:version or an asset id
    if stored:  # files in storage (e.g. a job's model output): registered where they are
        version = hashlib.sha256(ref.encode()).hexdigest()[:12]
        return (
            Model(name=deployment.name, version=version, path=ref, type="custom_model"),
            None,
            None,
        )
    if "://" in ref and not ref.startswith("file://"):
        raise UnsupportedFeature(
            f"model {ref!r}",
            provider.where,
            hint="use a local model directory, an azureml: model or datastore URI, "
            "or an https:// URL",
        )
    from mlcloud import modeldir

    root = Path(ref.removeprefix("file://"))
    try:
        manifest = modeldir.read_manifest(root)
        sha = modeldir.digest(root)
    except (OSError, ValueError) as err:
        raise SpecError(f"model: {root} is not an mlcloud model directory ({err})") from None
    model = Model(
        name=deployment.name,
        version=sha[:12],  # content-addressed: the same model dir is the same version
        path=str(root),
        type="custom_model",
        description=f"mlcloud model ({manifest.get('framework')})",
        tags={"mlcloud-sha256": sha, "mlcloud-framework": str(manifest.get("framework"))},
    )
    return model, sha, str(manifest.get("framework"))


def _model_arm_id(provider: AzureMLProvider, model: str | Model) -> str:
    if isinstance(model, str):
        parts = model.removeprefix("azureml:").split(":")
        if model.startswith("azureml://") or len(parts) != 2:
            return model
        return arm_id(provider, "models", parts[0], parts[1])
    return arm_id(provider, "models", str(model.name), str(model.version))


def _model_id(model: str | Model) -> str:
    if isinstance(model, str):
        return model
    return f"azureml:{model.name}:{model.version}"


# ---- entities ----------------------------------------------------------------------------
def _instance_type(provider: AzureMLProvider, deployment: Deployment) -> str:
    res = deployment.resources
    if res.instance_type.get("azureml"):
        return res.instance_type["azureml"]
    if res.cpus is None and res.memory is None and not res.accelerator_count:
        return provider.settings.serving_instance_type
    return machines.pick(res, provider.where)


def _environment(provider: AzureMLProvider) -> Any:
    from azure.ai.ml.entities import Environment

    from serving.contracts import AZUREML_PORT, Contract

    image = provider.settings.serving_image
    if not image:
        raise ConfigError(
            f"profile {provider.name!r} has no serving_image",
            hint="build the mlcloud serving image (serving/image.py), push it to your ACR "
            "and set serving_image: in the profile",
        )
    contract = Contract("azureml", None, AZUREML_PORT, ("/score",), ("/health",), ("/",))
    return Environment(image=image, inference_config=contract.azureml_inference_config())


def deployment_name(model_id: str, instance_type: str, deployment: Deployment, image: str) -> str:
    """Same served configuration, same name (an update); anything else, a new blue/green name."""
    key = json.dumps(
        [model_id, instance_type, deployment.min_replicas, dict(deployment.env), image],
        sort_keys=True,
    )
    return "d" + hashlib.sha256(key.encode()).hexdigest()[:10]


def _entities(
    provider: AzureMLProvider, deployment: Deployment
) -> tuple[ManagedOnlineEndpoint, ManagedOnlineDeployment, str | Model, str | None, str | None]:
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint, ProbeSettings

    from providers.azureml.clients import quiet_sdk

    quiet_sdk()
    if not ENDPOINT_NAME.match(deployment.name):
        raise SpecError(
            f"name: {deployment.name!r} is not a valid Azure ML endpoint name",
            hint="3-32 characters: a letter first, then letters, digits and '-'",
        )
    if deployment.min_replicas != deployment.max_replicas:
        raise UnsupportedFeature(
            "autoscaling replicas {min, max}",
            provider.where,
            hint="Azure ML managed endpoints scale through Azure Monitor autoscale, which "
            "azure-ai-ml does not manage: deploy a fixed replicas count and add an autoscale "
            "setting with `az monitor autoscale create`",
        )
    model, sha, framework = _model(provider, deployment)
    instance_type = _instance_type(provider, deployment)
    environment = _environment(provider)
    name = deployment_name(_model_id(model), instance_type, deployment, environment.image)
    tags = {**provider.settings.tags, "mlcloud-endpoint": deployment.name}
    endpoint = ManagedOnlineEndpoint(name=deployment.name, auth_mode="key", tags=tags)
    probe = {"initial_delay": 10, "period": 10, "timeout": 2, "failure_threshold": 30}
    online = ManagedOnlineDeployment(
        name=name,
        endpoint_name=deployment.name,
        model=model,
        environment=environment,
        environment_variables={**deployment.env, "MLCLOUD_SERVING_CONTRACT": "azureml"},
        instance_type=instance_type,
        instance_count=deployment.min_replicas,
        liveness_probe=ProbeSettings(**probe),
        readiness_probe=ProbeSettings(**probe),
        tags=tags,
    )
    return endpoint, online, model, sha, framework


def _traffic(deployment: Deployment, new: str) -> dict[str, int]:
    if deployment.traffic is None:
        return {new: 100}
    return {(new if k == NEW else k): v for k, v in deployment.traffic.items() if v}


def _known_deployments(provider: AzureMLProvider, name: str) -> list[str]:
    try:
        record = provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return []
    return list(record.details.get("deployments", {}))


# ---- plan / deploy -------------------------------------------------------------------------
def _rest(rest_model: Any) -> dict[str, Any]:
    """A REST model as the SDK's arm client serializes it for the PUT body."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    body: dict[str, Any] = json.loads(
        json.dumps(rest_model, cls=SdkJSONEncoder, exclude_readonly=True)
    )
    return body


def plan_deploy(provider: AzureMLProvider, deployment: Deployment) -> Plan:
    endpoint, online, model, sha, framework = _entities(provider, deployment)
    traffic = _traffic(deployment, str(online.name))
    unknown = sorted(set(traffic) - {online.name, *_known_deployments(provider, deployment.name)})
    if unknown:
        raise SpecError(
            f"traffic: {', '.join(unknown)} is not a deployment of endpoint {deployment.name!r}",
            hint=f"use '{NEW}' for the deployment this plan creates",
        )
    steps: list[PlanStep] = []
    if not isinstance(model, str):
        steps.append(PlanStep("models.CreateOrUpdate", _rest(model._to_rest_object())))
    endpoint_body = _rest(endpoint._to_rest_online_endpoint(LOCATION))
    steps.append(PlanStep("onlineEndpoints.CreateOrUpdate", endpoint_body))
    online_body = _rest(online._to_rest_object(LOCATION))
    # The SDK registers the model and the image environment first and sends their ids.
    online_body["properties"]["model"] = _model_arm_id(provider, model)
    online_body["properties"]["environmentId"] = environment_id(provider, online.environment)
    steps.append(PlanStep("onlineDeployments.CreateOrUpdate", online_body))
    mirror = provider.settings.mirror_traffic
    old = [d for d in _known_deployments(provider, deployment.name) if d != online.name]
    if mirror and old:
        steps.append(PlanStep("onlineEndpoints.Update", {"mirrorTraffic": {online.name: mirror}}))
    steps.append(PlanStep("onlineEndpoints.Update", {"traffic": traffic, "mirrorTraffic": {}}))
    steps += [PlanStep("onlineDeployments.Delete", {"name": d}) for d in old if d not in traffic]
    return Plan(
        provider=provider.name,
        type=provider.type,
        kind="deploy",
        id=deployment.name,
        spec=deployment,
        steps=tuple(steps),
        context={"deployment": online.name, "sha256": sha, "framework": framework},
    )


def _wait(start: Any, *args: Any, **kwargs: Any) -> Any:
    """Start a long-running operation and wait for it (azure-core polls the status URL)."""
    with mapped():
        return start(*args, **kwargs).result()


def deploy(provider: AzureMLProvider, plan: Plan) -> EndpointRecord:
    if plan.type != provider.type or plan.kind != "deploy" or not isinstance(plan.spec, Deployment):
        raise ValueError(f"not an azureml deploy plan: {plan.type}/{plan.kind}")
    spec = plan.spec
    ml = provider.client
    endpoint, online, model, sha, framework = _entities(provider, spec)
    if not isinstance(model, str):
        try:  # versions are content-addressed and immutable: an existing one is reused
            with mapped():
                registered = ml.models.get(name=str(model.name), version=str(model.version))
            fresh = False
        except NotFound:
            with mapped():
                registered = ml.models.create_or_update(model)  # uploads a local model dir
            fresh = True
        online.model = registered.id
        if fresh:  # lineage: endpoint <- model version <- job
            provider.store.add_model_version(
                spec.name,
                registered.id or _model_id(model),
                sha256=sha,
                framework=framework,
                source_job=spec.source_job,
                details={"provider": provider.name, "azureml_version": registered.version},
            )
    try:
        with mapped():
            live = ml.online_endpoints.get(spec.name)
    except NotFound:
        live = _wait(ml.online_endpoints.begin_create_or_update, endpoint)
    _wait(ml.online_deployments.begin_create_or_update, online)
    traffic = _traffic(spec, str(online.name))
    old = [d for d in (live.traffic or {}) if d != online.name]
    old += [d for d in _deployments(provider, spec.name) if d != online.name and d not in old]
    if provider.settings.mirror_traffic and old:
        live.mirror_traffic = {online.name: provider.settings.mirror_traffic}
        live = _wait(ml.online_endpoints.begin_create_or_update, live)
        time.sleep(provider.settings.mirror_seconds)
    live.traffic = traffic
    live.mirror_traffic = {}
    live = _wait(ml.online_endpoints.begin_create_or_update, live)
    for name in old:
        if name not in traffic:
            with contextlib.suppress(NotFound):  # already gone
                _wait(ml.online_deployments.begin_delete, name=name, endpoint_name=spec.name)
    record = EndpointRecord(
        name=spec.name,
        provider=provider.name,
        type=provider.type,
        state=_state(live.provisioning_state),
        url=live.scoring_uri,
        model=str(online.model if isinstance(online.model, str) else _model_id(model)),
        model_sha256=sha,
        source_job=spec.source_job,
        native_id=live.id,
        details={"deployments": dict(traffic), "deployment": online.name},
        spec=spec.model_dump(mode="json"),
    )
    return provider.store.put_endpoint(record)


def _deployments(provider: AzureMLProvider, endpoint: str) -> list[str]:
    with mapped():
        return [d.name for d in provider.client.online_deployments.list(endpoint_name=endpoint)]


# ---- status / predict / undeploy -------------------------------------------------------------
def endpoint_status(provider: AzureMLProvider, name: str) -> EndpointRecord:
    record = provider.store.get_endpoint(name, provider=provider.name)
    try:
        with mapped():
            live = provider.client.online_endpoints.get(name)
    except NotFound:
        record.state = EndpointState.DELETED
        record.message = "the endpoint no longer exists in the workspace"
        return provider.store.put_endpoint(record)
    record.state = _state(live.provisioning_state)
    record.url = live.scoring_uri
    record.details = {**record.details, "deployments": dict(live.traffic or {})}
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
        with mapped():
            text = provider.client.online_endpoints.invoke(endpoint_name=name, request_file=path)
    finally:
        os.unlink(path)
    result = json.loads(text)
    # Some scoring stacks return the JSON document as a JSON string.
    return json.loads(result) if isinstance(result, str) else result


def undeploy(provider: AzureMLProvider, name: str) -> EndpointRecord | None:
    try:
        record: EndpointRecord | None = provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        record = None
    with contextlib.suppress(NotFound):  # idempotent: already gone
        _wait(provider.client.online_endpoints.begin_delete, name=name)
    if record is None:
        return None
    provider.store.delete_endpoint(name, provider.name)
    record.state = EndpointState.DELETED
    return record
