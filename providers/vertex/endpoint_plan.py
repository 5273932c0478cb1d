"""Deployment -> the proto-JSON of the Model/Endpoint service calls that deploy it (pure).

A plan is fully deterministic: the model id is the deployment name, each upload is a new version
of that model tagged with the alias ``sha-<digest>``, and DeployModel refers to that version as
``models/<name>@sha-<digest>``. A re-deploy puts the new version beside the old one, moves the
traffic (``traffic: {new: 20, previous: 80}`` keeps a canary split), then undeploys the old
versions that are left without traffic. Planning reads the local store (what this name serves
now) but writes nothing and calls nothing.

Version ids are Vertex's deployedModelIds. ``plan_traffic`` plans a later split: UpdateEndpoint
of ``traffic_split`` when every deployed model stays, else one UndeployModel per retired model,
each carrying the new ``traffic_split`` (Vertex refuses to undeploy a model that still has
traffic unless the request reassigns it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud import modeldir
from mlcloud.errors import ConfigError, NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import EndpointRecord, Plan, PlanStep
from providers.vertex import capture, machines

if TYPE_CHECKING:
    from mlcloud.specs import Deployment
    from providers.vertex.protojson import (
        CreateEndpointRequest,
        DeployModelRequest,
        Endpoint,
        UndeployModelRequest,
        UploadModelRequest,
    )
    from providers.vertex.provider import VertexProvider

UPLOAD, CREATE, DEPLOY, UNDEPLOY, UPDATE = (
    "ModelService.UploadModel",
    "EndpointService.CreateEndpoint",
    "EndpointService.DeployModel",
    "EndpointService.UndeployModel",
    "EndpointService.UpdateEndpoint",
)
SERVING_PORT = 8080
PREDICT_ROUTE, HEALTH_ROUTE = "/predict", "/health"


@dataclass(frozen=True)
class ModelSource:
    """The model's artifact URI and, for a local model dir, the files to stage there first."""

    uri: str
    digest: str
    prefix: str | None = None  # the content-hashed GCS folder of a local model dir
    files: tuple[tuple[str, str], ...] = ()  # (local path, object key)
    framework: str | None = None


@dataclass(frozen=True)
class VertexDeployContext:
    source: ModelSource
    endpoint: str  # projects/P/locations/L/endpoints/<name>
    model: str  # projects/P/locations/L/models/<name>
    alias: str  # sha-<digest>: the version this plan deploys

    @property
    def version(self) -> str:
        """The model version, as DeployModel and GetModel name it."""
        return f"{self.model}@{self.alias}"


def plan_deploy(provider: VertexProvider, d: Deployment) -> Plan[Deployment]:
    conf, where = provider.settings, provider.where
    image = _serving_image(provider)
    _check_replicas(d, where)
    source = _model_source(provider, d)
    existing = existing_endpoint(provider, d.name)
    context = VertexDeployContext(
        source=source,
        endpoint=f"{conf.parent}/endpoints/{d.name}",
        model=f"{conf.parent}/models/{d.name}",
        alias=f"sha-{source.digest[:12]}",
    )
    old = list(existing.details.get("deployed_models", {})) if existing else []
    if _already_serving(existing, d, context, old):
        return provider.make_plan("deploy", d.name, d, (), context=context)  # nothing to send
    split = _split(d, existing, where)
    machine = machines.pick(d.resources, where)
    steps = [PlanStep(UPLOAD, _upload(provider, d, context, image, existing))]
    if existing is None:
        steps.append(PlanStep(CREATE, _create(provider, d)))
    elif capture.changed(existing.spec, d):
        update = capture.update_step(d, existing.native_id or context.endpoint, conf)
        steps.append(PlanStep(UPDATE, update))  # the log follows the deployment's capture
    steps.append(PlanStep(DEPLOY, _deploy(d, context, machine, split)))
    steps += [PlanStep(UNDEPLOY, _undeploy(context, dm)) for dm in old if dm not in split]
    return provider.make_plan("deploy", d.name, d, steps, context=context)


def existing_endpoint(provider: VertexProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


# ---- the steps, in the order plan_deploy takes them -------------------------------------------
def _serving_image(provider: VertexProvider) -> str:
    if not provider.settings.serving_image:
        raise ConfigError(
            f"profile {provider.name!r}: serving_image is needed to deploy on Vertex",
            hint="set serving_image: to the mlcloud serving container in mlcloud.yaml",
        )
    return provider.settings.serving_image


def _check_replicas(d: Deployment, where: str) -> None:
    """What a Vertex dedicated endpoint cannot scale like, refused before anything is computed."""
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


def _model_source(provider: VertexProvider, d: Deployment) -> ModelSource:
    """A gs:// model is used in place; a local model dir goes under its content digest."""
    conf = provider.settings
    if d.model.startswith("gs://"):
        return ModelSource(d.model.rstrip("/"), hashlib.sha256(d.model.encode()).hexdigest())
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
    framework = manifest.get("framework")
    return ModelSource(
        uri=f"gs://{conf.bucket}/{prefix}",
        digest=digest,
        prefix=prefix,
        files=tuple(
            (str(root / rel), f"{prefix}/{rel}") for rel in [*manifest["files"], modeldir.MANIFEST]
        ),
        framework=str(framework) if framework else None,
    )


def _already_serving(
    existing: EndpointRecord | None, d: Deployment, context: VertexDeployContext, old: list[str]
) -> bool:
    """This very model version already takes all the traffic: the plan is empty."""
    return (
        existing is not None
        and existing.model_sha256 == context.source.digest
        and d.traffic is None
        and existing.details.get("alias") == context.alias
        and len(old) == 1
        and not capture.changed(existing.spec, d)
    )


def _split(d: Deployment, existing: EndpointRecord | None, where: str) -> dict[str, int]:
    """traffic_split for DeployModel; "0" is Vertex's name for the model being deployed, and
    ``previous`` the one deployed model taking traffic now."""
    if d.traffic is None:
        return {"0": 100}
    unknown = sorted(set(d.traffic) - {"new", "previous"})
    if unknown:
        raise SpecError(f"traffic: unknown keys {unknown}; allowed: new, previous")
    share = d.traffic.get("previous", 0)
    traffic = (existing.details.get("traffic") or {}) if existing else {}
    serving = [dm for dm, pct in traffic.items() if pct > 0]
    if share and len(serving) != 1:
        raise UnsupportedFeature(
            f"traffic.previous with {len(serving)} versions taking traffic",
            where,
            hint="give all traffic to one version first (omit traffic, or set_traffic)",
        )
    split = {"0": d.traffic.get("new", 0)}
    if share:
        split[serving[0]] = share
    return split


def _known_model(provider: VertexProvider, name: str) -> str | None:
    """The Vertex model this name already has in the local model registry, if any."""
    for row in reversed(provider.store.list_models(name)):
        if row["details"].get("provider") == provider.name and row["details"].get("vertex_model"):
            return str(row["details"]["vertex_model"])
    return None


def _upload(
    provider: VertexProvider,
    d: Deployment,
    context: VertexDeployContext,
    image: str,
    existing: EndpointRecord | None,
) -> UploadModelRequest:
    """A new version of the name's model (or the model itself), served by mlcloud's image."""
    conf = provider.settings
    env = {"MLCLOUD_SERVING_CONTRACT": "vertex", **d.env}
    request: UploadModelRequest = {
        "parent": conf.parent,
        "model": {
            "displayName": d.name,
            "artifactUri": context.source.uri,
            "versionAliases": [context.alias],
            "labels": {**conf.labels, "mlcloud-endpoint": d.name},
            "containerSpec": {
                "imageUri": image,
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "ports": [{"containerPort": SERVING_PORT}],
                "predictRoute": PREDICT_ROUTE,
                "healthRoute": HEALTH_ROUTE,
            },
        },
    }
    parent_model = _known_model(provider, d.name) or (
        existing.details.get("model") if existing else None
    )
    if parent_model:  # a new version of the model this name already has in the registry
        request["parentModel"] = str(parent_model)
    else:
        request["modelId"] = d.name
    if conf.service_account:
        request["serviceAccount"] = conf.service_account
    return request


def _create(provider: VertexProvider, d: Deployment) -> CreateEndpointRequest:
    conf = provider.settings
    endpoint: Endpoint = {
        "displayName": d.name,
        "labels": {**conf.labels, "mlcloud-endpoint": d.name},
    }
    logging = capture.logging_config(d, conf)
    if logging is not None:  # the deployment's ``capture`` (capture.py)
        endpoint["predictRequestResponseLoggingConfig"] = logging
    return {"parent": conf.parent, "endpointId": d.name, "endpoint": endpoint}


def _deploy(
    d: Deployment, context: VertexDeployContext, machine: machines.Machine, split: dict[str, int]
) -> DeployModelRequest:
    return {
        "endpoint": context.endpoint,
        "deployedModel": {
            "model": context.version,
            "displayName": f"{d.name}-{context.alias}",
            "dedicatedResources": {
                "machineSpec": machine.spec(),
                "minReplicaCount": d.min_replicas,
                "maxReplicaCount": d.max_replicas,
            },
        },
        "trafficSplit": split,
    }


def _undeploy(context: VertexDeployContext, deployed_model_id: str) -> UndeployModelRequest:
    return {"endpoint": context.endpoint, "deployedModelId": deployed_model_id}


# ---- a later split (set_traffic) -------------------------------------------------------------
@dataclass(frozen=True)
class TrafficContext:
    endpoint: str  # projects/P/locations/L/endpoints/<name>
    weights: dict[str, int]


def plan_traffic(
    provider: VertexProvider, record: EndpointRecord, weights: dict[str, int]
) -> Plan[Deployment]:
    """UpdateEndpoint's ``traffic_split`` when every deployed model stays; else UndeployModel
    of each one left out, each with the new split (the template checked the weights)."""
    from mlcloud.specs import Deployment

    endpoint = record.native_id or f"{provider.settings.parent}/endpoints/{record.name}"
    retired = [dm for dm in record.details.get("deployed_models", {}) if dm not in weights]
    split = dict(weights)
    if retired:
        steps = [
            PlanStep(UNDEPLOY, {"endpoint": endpoint, "deployedModelId": dm, "trafficSplit": split})
            for dm in retired
        ]
    else:
        update = {
            "endpoint": {"name": endpoint, "trafficSplit": split},
            "updateMask": "trafficSplit",
        }
        steps = [PlanStep(UPDATE, update)]
    base = record.spec or {"name": record.name, "model": record.model or "unknown"}
    spec = Deployment.model_validate({**base, "traffic": split})
    context = TrafficContext(endpoint, split)
    return provider.make_plan("deploy", record.name, spec, steps, context=context)
