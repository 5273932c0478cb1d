"""Deployments as Vertex endpoints: upload a model version, deploy it, shift traffic, predict.

A plan is fully deterministic: the model id is the deployment name, each upload is a new version
of that model tagged with the alias ``sha-<digest>``, and DeployModel refers to that version as
``models/<name>@sha-<digest>``. A re-deploy puts the new version beside the old one, moves the
traffic (``traffic: {new: 20, previous: 80}`` keeps a canary split), then undeploys the old
versions that are left without traffic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import modeldir
from mlcloud.errors import (
    ConfigError,
    Conflict,
    NotFound,
    NotFoundLocally,
    SpecError,
    UnsupportedFeature,
)
from mlcloud.provider import EndpointRecord, EndpointState, Plan, PlanStep
from providers.vertex import gcs, machines
from providers.vertex.errors import call, mapped, read_retry

if TYPE_CHECKING:
    from mlcloud.specs import Deployment
    from providers.vertex import VertexProvider

UPLOAD, CREATE, DEPLOY, UNDEPLOY = (
    "ModelService.UploadModel",
    "EndpointService.CreateEndpoint",
    "EndpointService.DeployModel",
    "EndpointService.UndeployModel",
)
SERVING_PORT = 8080
PREDICT_ROUTE, HEALTH_ROUTE = "/predict", "/health"
CALL_TIMEOUT = 60.0


def _existing(provider: VertexProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


def _known_model(provider: VertexProvider, name: str) -> str | None:
    for row in reversed(provider.store.list_models(name)):
        if row["details"].get("provider") == provider.name and row["details"].get("vertex_model"):
            return str(row["details"]["vertex_model"])
    return None


def _model_source(provider: VertexProvider, d: Deployment) -> dict[str, Any]:
    """The artifact URI for the model and what must be uploaded to get it there."""
    conf = provider.settings
    if d.model.startswith("gs://"):
        import hashlib

        return {"uri": d.model.rstrip("/"), "digest": hashlib.sha256(d.model.encode()).hexdigest()}
    if "://" in d.model:
        raise UnsupportedFeature(
            f"model from {d.model.split('://', 1)[0]}://",
            provider.where,
            hint="use a local model directory or a gs:// URI",
        )
    root = Path(d.model)
    try:
        manifest = modeldir.verify(root)
        digest = modeldir.digest(root)
    except (modeldir.ModelDirError, OSError) as err:
        raise SpecError(f"model: {root} is not a usable mlcloud model directory: {err}") from None
    prefix = f"{conf.prefix}/models/{digest}"
    files = [*manifest["files"], modeldir.MANIFEST]
    return {
        "uri": f"gs://{conf.bucket}/{prefix}",
        "digest": digest,
        "prefix": prefix,
        "files": [(str(root / rel), f"{prefix}/{rel}") for rel in files],
        "framework": manifest.get("framework"),
    }


def _split(d: Deployment, old: list[str], where: str) -> dict[str, int]:
    """traffic_split for DeployModel; "0" is Vertex's name for the model being deployed."""
    if d.traffic is None:
        return {"0": 100}
    unknown = sorted(set(d.traffic) - {"new", "previous"})
    if unknown:
        raise SpecError(f"traffic: unknown keys {unknown}; allowed: new, previous")
    share = d.traffic.get("previous", 0)
    if share and len(old) != 1:
        raise UnsupportedFeature(
            f"traffic.previous with {len(old)} deployed versions",
            where,
            hint="give all traffic to the new version first (omit traffic)",
        )
    split = {"0": d.traffic.get("new", 0)}
    if share:
        split[old[0]] = share
    return split


def plan_deploy(provider: VertexProvider, d: Deployment) -> Plan:
    conf = provider.settings
    where = provider.where
    if not conf.serving_image:
        raise ConfigError(
            f"profile {provider.name!r}: serving_image is needed to deploy on Vertex",
            hint="set serving_image: to the mlcloud serving container in mlcloud.yaml",
        )
    if not isinstance(d.replicas, int) and d.replicas.target is not None:
        raise UnsupportedFeature(
            "replicas.target (requests per replica)",
            where,
            hint="Vertex autoscales on CPU/GPU utilisation: drop replicas.target",
        )
    if d.min_replicas < 1:
        raise UnsupportedFeature(
            "replicas.min: 0 (scale to zero)",
            where,
            hint="Vertex dedicated endpoints keep at least one replica: use replicas.min >= 1",
        )
    source = _model_source(provider, d)
    existing = _existing(provider, d.name)
    endpoint = f"{conf.parent}/endpoints/{d.name}"
    alias = f"sha-{source['digest'][:12]}"
    parent_model = _known_model(provider, d.name) or (
        existing.details.get("model") if existing else None
    )
    model_name = f"{conf.parent}/models/{d.name}"
    labels = {**conf.labels, "mlcloud-endpoint": d.name}
    env = {"MLCLOUD_SERVING_CONTRACT": "vertex", **d.env}
    upload: dict[str, Any] = {
        "parent": conf.parent,
        "model": {
            "displayName": d.name,
            "artifactUri": source["uri"],
            "versionAliases": [alias],
            "labels": labels,
            "containerSpec": {
                "imageUri": conf.serving_image,
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "ports": [{"containerPort": SERVING_PORT}],
                "predictRoute": PREDICT_ROUTE,
                "healthRoute": HEALTH_ROUTE,
            },
        },
    }
    if parent_model:  # a new version of the model this name already has in the registry
        upload["parentModel"] = parent_model
    else:
        upload["modelId"] = d.name
    if conf.service_account:
        upload["serviceAccount"] = conf.service_account

    old = list(existing.details.get("deployed_models", {})) if existing else []
    if existing and existing.model_sha256 == source["digest"] and d.traffic is None:
        old_alias = existing.details.get("alias")
        if old_alias == alias and len(old) == 1:
            # already serving exactly this model with all traffic: nothing to send
            return _plan(provider, d, (), source, endpoint, model_name, alias)
    split = _split(d, old, where)
    machine = machines.pick(d.resources, where)
    steps = [PlanStep(UPLOAD, upload)]
    if existing is None:
        steps.append(
            PlanStep(
                CREATE,
                {
                    "parent": conf.parent,
                    "endpointId": d.name,
                    "endpoint": {"displayName": d.name, "labels": labels},
                },
            )
        )
    steps.append(
        PlanStep(
            DEPLOY,
            {
                "endpoint": endpoint,
                "deployedModel": {
                    "model": f"{model_name}@{alias}",
                    "displayName": f"{d.name}-{alias}",
                    "dedicatedResources": {
                        "machineSpec": machine.spec(),
                        "minReplicaCount": d.min_replicas,
                        "maxReplicaCount": d.max_replicas,
                    },
                },
                "trafficSplit": split,
            },
        )
    )
    steps += [
        PlanStep(UNDEPLOY, {"endpoint": endpoint, "deployedModelId": dm})
        for dm in old
        if dm not in split
    ]
    return _plan(provider, d, tuple(steps), source, endpoint, model_name, alias)


def _plan(
    provider: VertexProvider,
    d: Deployment,
    steps: tuple[PlanStep, ...],
    source: dict[str, Any],
    endpoint: str,
    model_name: str,
    alias: str,
) -> Plan:
    return Plan(
        provider=provider.name,
        type=provider.type,
        kind="deploy",
        id=d.name,
        spec=d,
        steps=steps,
        context={"source": source, "endpoint": endpoint, "model": model_name, "alias": alias},
    )


def _wait(provider: VertexProvider, operation: Any, what: str) -> Any:
    from google.api_core.future import polling

    # Real deploys take minutes: start polling fast, back off to 15 s between polls.
    policy = polling.DEFAULT_POLLING.with_delay(initial=0.2, maximum=15.0, multiplier=1.5)
    timeout = provider.settings.operation_timeout
    with mapped(what):
        return operation.result(timeout=timeout, polling=policy.with_timeout(timeout))


def _stage_model(provider: VertexProvider, source: dict[str, Any]) -> int:
    if "files" not in source:
        return 0
    return gcs.put_files_if_absent(provider.clients.bucket, source["files"], source["prefix"])


def _upload(provider: VertexProvider, request: dict[str, Any], ref: str) -> None:
    from google.cloud import aiplatform_v1

    models = provider.clients.models
    try:  # the version is already there (a retried or repeated deploy): reuse it
        call("looking up model", models.get_model, name=ref, retry=read_retry(), timeout=30.0)
        return
    except NotFound:
        pass
    proto = aiplatform_v1.UploadModelRequest.from_json(json.dumps(request))
    try:
        op = call("uploading model", models.upload_model, request=proto, timeout=CALL_TIMEOUT)
    except Conflict:
        if not proto.model_id:
            raise
        # the model exists (this store never saw it): add a version to it instead
        proto.parent_model = f"{proto.parent}/models/{proto.model_id}"
        proto.model_id = ""
        op = call("uploading model", models.upload_model, request=proto, timeout=CALL_TIMEOUT)
    _wait(provider, op, "uploading model")


def deploy(provider: VertexProvider, plan: Plan) -> EndpointRecord:
    from google.cloud import aiplatform_v1

    if plan.type != provider.type or plan.provider != provider.name or plan.kind != "deploy":
        raise ConfigError(f"plan for {plan.id} was not made by vertex profile {provider.name!r}")
    ctx = plan.context
    d: Deployment = plan.spec  # type: ignore[assignment]
    staged = _stage_model(provider, ctx["source"])
    endpoints = provider.clients.endpoints
    ref = f"{ctx['model']}@{ctx['alias']}"
    for step in plan.steps:
        if step.call == UPLOAD:
            _upload(provider, dict(step.request), ref)
        elif step.call == CREATE:
            proto = aiplatform_v1.CreateEndpointRequest.from_json(json.dumps(step.request))
            try:
                op = call("creating endpoint", endpoints.create_endpoint, request=proto)
                _wait(provider, op, "creating endpoint")
            except Conflict:
                pass  # endpoint ids are the deployment name: it is already there
        elif step.call == DEPLOY:
            proto = aiplatform_v1.DeployModelRequest.from_json(json.dumps(step.request))
            op = call("deploying model", endpoints.deploy_model, request=proto)
            _wait(provider, op, "deploying model")
        elif step.call == UNDEPLOY:
            _undeploy_one(provider, step.request["endpoint"], step.request["deployedModelId"])
    record = endpoint_status(provider, d.name, plan=plan)
    if plan.steps:
        model = call(
            "looking up model", provider.clients.models.get_model, name=ref, retry=read_retry()
        )
        provider.store.add_model_version(
            d.name,
            ctx["source"]["uri"],
            sha256=ctx["source"]["digest"],
            framework=ctx["source"].get("framework"),
            source_job=d.source_job,
            details={
                "provider": provider.name,
                "vertex_model": model.name,
                "version_id": model.version_id,
                "staged_bytes": staged,
            },
        )
    return record


def _undeploy_one(provider: VertexProvider, endpoint: str, deployed_model_id: str) -> None:
    request = {"endpoint": endpoint, "deployed_model_id": deployed_model_id}
    try:
        op = call("undeploying model", provider.clients.endpoints.undeploy_model, request=request)
        _wait(provider, op, "undeploying model")
    except NotFound:
        pass  # already gone


def _get_endpoint(provider: VertexProvider, native: str) -> Any:
    return call(
        "describing endpoint",
        provider.clients.endpoints.get_endpoint,
        name=native,
        retry=read_retry(),
        timeout=CALL_TIMEOUT,
    )


def endpoint_status(
    provider: VertexProvider, name: str, plan: Plan | None = None
) -> EndpointRecord:
    existing = _existing(provider, name)
    if plan is not None:
        native = str(plan.context["endpoint"])
    elif existing is not None and existing.native_id:
        native = existing.native_id
    else:
        raise NotFoundLocally(f"no vertex endpoint {name!r} in profile {provider.name!r}")
    base = existing or EndpointRecord(
        name=name, provider=provider.name, type=provider.type, state=EndpointState.CREATING
    )
    try:
        ep = _get_endpoint(provider, native)
    except NotFound:
        if plan is not None:
            raise
        base.state = EndpointState.DELETED
        base.message = f"{native} no longer exists in Vertex AI"
        base.details["deployed_models"] = {}
        return provider.store.put_endpoint(base)
    deployed = {dm.id: dm.model for dm in ep.deployed_models}
    traffic = {k: int(v) for k, v in ep.traffic_split.items()}
    if plan is not None:
        d: Deployment = plan.spec  # type: ignore[assignment]
        base.model = plan.context["source"]["uri"]
        base.model_sha256 = plan.context["source"]["digest"]
        base.source_job = d.source_job
        base.spec = d.model_dump(mode="json")
        base.details["alias"] = plan.context["alias"]
    base.native_id = ep.name
    base.state = EndpointState.READY if deployed else EndpointState.CREATING
    host = provider.clients.api_endpoint
    base.url = f"{host if '://' in host else 'https://' + host}/v1/{ep.name}:predict"
    base.details.update(
        {"endpoint": ep.name, "model": plan.context["model"] if plan else base.details.get("model"),
         "deployed_models": deployed, "traffic": traffic}
    )  # fmt: skip
    return provider.store.put_endpoint(base)


def predict(provider: VertexProvider, name: str, payload: Any) -> Any:
    record = provider.store.get_endpoint(name, provider=provider.name)
    instances = payload.get("instances") if isinstance(payload, dict) else payload
    if not isinstance(instances, list) or not instances:
        raise SpecError(
            'predict payload: expected {"instances": [...]} with at least one instance',
            hint='e.g. {"instances": [[5.1, 3.5, 1.4, 0.2]]}',
        )
    request = {"endpoint": record.native_id, "instances": instances}
    if isinstance(payload, dict) and "parameters" in payload:
        request["parameters"] = payload["parameters"]
    from google.cloud import aiplatform_v1

    proto = aiplatform_v1.PredictRequest.from_json(json.dumps(request))
    response = call(
        f"predicting with {name}", provider.clients.prediction.predict, request=proto,
        timeout=CALL_TIMEOUT,
    )  # fmt: skip
    data = type(response).to_dict(response)
    return {
        "predictions": data.get("predictions", []),
        "deployed_model_id": data.get("deployed_model_id"),
        "model_version_id": data.get("model_version_id"),
    }


def undeploy(provider: VertexProvider, name: str) -> EndpointRecord | None:
    """Undeploy every model and delete the endpoint; a missing endpoint is not an error."""
    existing = _existing(provider, name)
    if existing is None:
        return None
    native = existing.native_id or f"{provider.settings.parent}/endpoints/{name}"
    try:
        ep = _get_endpoint(provider, native)
    except NotFound:
        ep = None
    if ep is not None:
        for dm in ep.deployed_models:
            _undeploy_one(provider, native, dm.id)
        try:
            op = call("deleting endpoint", provider.clients.endpoints.delete_endpoint, name=native)
            _wait(provider, op, "deleting endpoint")
        except NotFound:
            pass
    provider.store.delete_endpoint(name, provider.name)
    existing.state = EndpointState.DELETED
    existing.details["deployed_models"] = {}
    return existing
