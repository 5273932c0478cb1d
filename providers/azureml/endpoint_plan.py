"""Deployment -> the managed online endpoint calls and their REST bodies (pure).

One ``ManagedOnlineEndpoint`` per mlcloud endpoint (key auth) and one
``ManagedOnlineDeployment`` per served configuration, named by a hash of the model version and
the deployment settings, so re-deploying the same thing is a no-op update and anything else is
blue/green: the new deployment is created beside the old one at 0% traffic, optionally
receives a mirrored share of live traffic for ``mirror_seconds`` (shadow testing), then takes
the traffic (``Deployment.traffic`` may keep a canary split, ``"new"`` naming this plan's
deployment and ``"previous"`` the one deployment taking traffic now), and deployments left
without traffic are deleted. Version ids are deployment names. ``plan_traffic`` plans a later
split: the endpoint's traffic, then the deletion of each deployment left out.

The steps, in order: ``models.CreateOrUpdate`` (a model directory or files in storage become a
content-versioned model asset), ``onlineEndpoints.CreateOrUpdate``,
``onlineDeployments.CreateOrUpdate``, ``onlineEndpoints.Update`` (the mirrored share, when
configured and an old deployment exists; then the traffic), ``onlineDeployments.Delete`` for
each old deployment left without traffic. The workspace location and the uploaded model's
datastore URI are filled in by the SDK at deploy time. Reading the store (which deployments the
endpoint has) is the only input besides the spec; nothing is written.

Autoscaling: managed online deployments scale through Azure Monitor autoscale settings, a
different resource provider that azure-ai-ml does not drive, so ``replicas: {min, max}`` with
min != max is refused at plan time with that hint.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import ConfigError, NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import EndpointRecord, Plan, PlanStep
from providers.azureml import capture, machines
from providers.azureml.job_plan import arm_id, environment_id

if TYPE_CHECKING:
    from azure.ai.ml.entities import (
        Environment,
        ManagedOnlineDeployment,
        ManagedOnlineEndpoint,
        Model,
    )

    from mlcloud.specs import Deployment
    from providers.azureml.provider import AzureMLProvider

ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
NEW = "new"  # the key of Deployment.traffic that names the deployment this plan creates
PREVIOUS = "previous"  # the key naming the one deployment taking traffic now
LOCATION = "<workspace location>"  # filled in by the SDK from the workspace at deploy time
CREATE_MODEL = "models.CreateOrUpdate"
CREATE_ENDPOINT = "onlineEndpoints.CreateOrUpdate"
CREATE_DEPLOYMENT = "onlineDeployments.CreateOrUpdate"
UPDATE_ENDPOINT = "onlineEndpoints.Update"
DELETE_DEPLOYMENT = "onlineDeployments.Delete"
PROBE = {"initial_delay": 10, "period": 10, "timeout": 2, "failure_threshold": 30}


@dataclass(frozen=True)
class DeployContext:
    """What planning computed that deploying and the record need."""

    deployment: str  # the name of the deployment this plan creates or updates
    sha256: str | None  # the model directory's digest (None: a registered or remote model)
    framework: str | None
    split: dict[str, int]  # the endpoint's traffic after the switch (deployment -> percent)


@dataclass(frozen=True)
class ModelChoice:
    """The model to serve: a reference (``azureml:name:version``) or an asset to register."""

    model: str | Model
    sha256: str | None = None
    framework: str | None = None


@dataclass(frozen=True)
class Entities:
    """The SDK entities of one deploy, built from the spec (at plan and again at deploy)."""

    endpoint: ManagedOnlineEndpoint
    online: ManagedOnlineDeployment
    environment: Environment  # the serving image the deployment runs
    model: ModelChoice


# ---- refusals --------------------------------------------------------------------------------
def check_deployment(deployment: Deployment, where: str) -> None:
    if not ENDPOINT_NAME.match(deployment.name):
        raise SpecError(
            f"name: {deployment.name!r} is not a valid Azure ML endpoint name",
            hint="3-32 characters: a letter first, then letters, digits and '-'",
        )
    if deployment.min_replicas != deployment.max_replicas:
        raise UnsupportedFeature(
            "autoscaling replicas {min, max}",
            where,
            hint="Azure ML managed endpoints scale through Azure Monitor autoscale, which "
            "azure-ai-ml does not manage: deploy a fixed replicas count and add an autoscale "
            "setting with `az monitor autoscale create`",
        )


# ---- the model -------------------------------------------------------------------------------
def choose_model(deployment: Deployment, where: str) -> ModelChoice:
    """A registered asset as is; files in storage or a local model directory as a model
    version to register, content-addressed so the same model is the same version."""
    from azure.ai.ml.entities import Model

    ref = deployment.model
    stored = ref.startswith(("https://", "azureml://datastores/")) or "/datastores/" in ref
    if ref.startswith("azureml:") and not stored:
        return ModelChoice(ref)  # a registered asset: azureml:name:version or an asset id
    if stored:  # files in storage (e.g. a job's model output): registered where they are
        version = hashlib.sha256(ref.encode()).hexdigest()[:12]
        return ModelChoice(
            Model(name=deployment.name, version=version, path=ref, type="custom_model")
        )
    if "://" in ref and not ref.startswith("file://"):
        raise UnsupportedFeature(
            f"model {ref!r}",
            where,
            hint="use a local model directory, an azureml: model or datastore URI, "
            "or an https:// URL",
        )
    return _local_model(deployment.name, Path(ref.removeprefix("file://")))


def _local_model(name: str, root: Path) -> ModelChoice:
    from azure.ai.ml.entities import Model

    from mlcloud import modeldir

    try:
        manifest = modeldir.read_manifest(root)
        sha = modeldir.digest(root)
    except (OSError, modeldir.ModelDirError) as err:
        raise SpecError(f"model: {root} is not an mlcloud model directory ({err})") from None
    framework = str(manifest.get("framework"))
    model = Model(
        name=name,
        version=sha[:12],  # content-addressed: the same model dir is the same version
        path=str(root),
        type="custom_model",
        description=f"mlcloud model ({framework})",
        tags={"mlcloud-sha256": sha, "mlcloud-framework": framework},
    )
    return ModelChoice(model, sha, framework)


def model_arm_id(provider: AzureMLProvider, model: str | Model) -> str:
    if isinstance(model, str):
        parts = model.removeprefix("azureml:").split(":")
        if model.startswith("azureml://") or len(parts) != 2:
            return model
        return arm_id(provider.settings, "models", parts[0], parts[1])
    return arm_id(provider.settings, "models", str(model.name), str(model.version))


def model_id(model: str | Model) -> str:
    if isinstance(model, str):
        return model
    return f"azureml:{model.name}:{model.version}"


# ---- the endpoint and its deployment ---------------------------------------------------------
def instance_type(provider: AzureMLProvider, deployment: Deployment) -> str:
    res = deployment.resources
    if res.instance_type.get("azureml"):
        return res.instance_type["azureml"]
    if res.cpus is None and res.memory is None and not res.accelerator_count:
        return provider.settings.serving_instance_type
    return machines.pick(res, provider.where)


def serving_environment(provider: AzureMLProvider) -> Environment:
    """The mlcloud serving image, with the azureml contract's routes."""
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


def deployment_name(model: str, vm_size: str, deployment: Deployment, image: str) -> str:
    """Same served configuration, same name (an update); anything else, a new blue/green name."""
    key = json.dumps(
        [model, vm_size, deployment.min_replicas, dict(deployment.env), image], sort_keys=True
    )
    return "d" + hashlib.sha256(key.encode()).hexdigest()[:10]


def entities(provider: AzureMLProvider, deployment: Deployment) -> Entities:
    """The endpoint and deployment entities for ``deployment`` (checks it first)."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint, ProbeSettings

    from providers.azureml.clients import quiet_sdk

    quiet_sdk()
    check_deployment(deployment, provider.where)
    chosen = choose_model(deployment, provider.where)
    vm_size = instance_type(provider, deployment)
    environment = serving_environment(provider)
    name = deployment_name(model_id(chosen.model), vm_size, deployment, str(environment.image))
    tags = {**provider.settings.tags, "mlcloud-endpoint": deployment.name}
    online = ManagedOnlineDeployment(
        name=name,
        endpoint_name=deployment.name,
        model=chosen.model,
        environment=environment,
        environment_variables={**deployment.env, "MLCLOUD_SERVING_CONTRACT": "azureml"},
        instance_type=vm_size,
        instance_count=deployment.min_replicas,
        liveness_probe=ProbeSettings(**PROBE),
        readiness_probe=ProbeSettings(**PROBE),
        tags=tags,
        data_collector=capture.data_collector(deployment),  # the deployment's ``capture``
    )
    endpoint = ManagedOnlineEndpoint(name=deployment.name, auth_mode="key", tags=tags)
    return Entities(endpoint, online, environment, chosen)


# ---- traffic ---------------------------------------------------------------------------------
def traffic(deployment: Deployment, new: str, previous: str | None = None) -> dict[str, int]:
    """The endpoint's traffic after the switch: ``new``/``previous`` resolved to deployment
    names; a deployment at 0 is left out (and deleted)."""
    if deployment.traffic is None:
        return {new: 100}
    names = {NEW: new, PREVIOUS: previous}
    split = {(names.get(k) or k): v for k, v in deployment.traffic.items() if v}
    if deployment.traffic.get(PREVIOUS) and previous is None:
        raise SpecError(
            f"traffic.{PREVIOUS}: endpoint {deployment.name!r} has no one deployment taking "
            "all its traffic now",
            hint="deploy without traffic first, or settle the split with set_traffic",
        )
    return split


def serving_deployment(provider: AzureMLProvider, name: str) -> str | None:
    """The one deployment taking traffic now, as the store knows it (None: none or several)."""
    try:
        record = provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None
    split = record.details.get("traffic") or record.details.get("deployments") or {}
    serving = [d for d, pct in split.items() if pct > 0]
    return serving[0] if len(serving) == 1 else None


def known_deployments(provider: AzureMLProvider, name: str) -> list[str]:
    """The deployments the store knows the endpoint has (none for a new endpoint)."""
    try:
        record = provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return []
    return list(record.details.get("deployments", {}))


def _check_traffic(deployment: Deployment, split: dict[str, int], known: list[str]) -> None:
    unknown = sorted(set(split) - set(known))
    if unknown:
        raise SpecError(
            f"traffic: {', '.join(unknown)} is not a deployment of endpoint {deployment.name!r}",
            hint=f"use '{NEW}' for the deployment this plan creates",
        )


# ---- the plan's steps ------------------------------------------------------------------------
def rest(rest_model: object) -> dict[str, Any]:
    """A REST model as the SDK's arm client serializes it for the PUT body."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder

    body: dict[str, Any] = json.loads(
        json.dumps(rest_model, cls=SdkJSONEncoder, exclude_readonly=True)
    )
    return body


def _create_steps(provider: AzureMLProvider, built: Entities) -> list[PlanStep]:
    """Register the model (unless it is a reference), the endpoint, the deployment."""
    steps: list[PlanStep] = []
    model = built.model.model
    if not isinstance(model, str):
        steps.append(PlanStep(CREATE_MODEL, rest(model._to_rest_object())))
    steps.append(PlanStep(CREATE_ENDPOINT, rest(built.endpoint._to_rest_online_endpoint(LOCATION))))
    body = rest(built.online._to_rest_object(LOCATION))
    # The SDK registers the model and the image environment first and sends their ids.
    body["properties"]["model"] = model_arm_id(provider, model)
    body["properties"]["environmentId"] = environment_id(provider.settings, built.environment)
    steps.append(PlanStep(CREATE_DEPLOYMENT, body))
    return steps


def _traffic_steps(new: str, split: dict[str, int], old: list[str], mirror: int) -> list[PlanStep]:
    """Mirror a share to the new deployment (when configured), switch, delete the unused."""
    steps: list[PlanStep] = []
    if mirror and old:
        steps.append(PlanStep(UPDATE_ENDPOINT, {"mirrorTraffic": {new: mirror}}))
    steps.append(PlanStep(UPDATE_ENDPOINT, {"traffic": split, "mirrorTraffic": {}}))
    steps += [PlanStep(DELETE_DEPLOYMENT, {"name": d}) for d in old if d not in split]
    return steps


def plan_deploy(provider: AzureMLProvider, deployment: Deployment) -> Plan[Deployment]:
    built = entities(provider, deployment)
    new = str(built.online.name)
    previous = serving_deployment(provider, deployment.name)
    if previous == new and deployment.traffic and deployment.traffic.get(PREVIOUS):
        raise SpecError(
            f"endpoint {deployment.name!r} already serves this model as {new}",
            hint=f"change its share with set_traffic, e.g. {{{new!r}: 100}}",
        )
    split = traffic(deployment, new, previous)
    known = known_deployments(provider, deployment.name)
    _check_traffic(deployment, split, [new, *known])
    old = [d for d in known if d != new]
    steps = _create_steps(provider, built)
    steps += _traffic_steps(new, split, old, provider.settings.mirror_traffic)
    context = DeployContext(new, built.model.sha256, built.model.framework, split)
    return provider.make_plan("deploy", deployment.name, deployment, steps, context=context)


# ---- a later split (set_traffic) -------------------------------------------------------------
def plan_traffic(
    provider: AzureMLProvider, record: EndpointRecord, weights: dict[str, int]
) -> Plan[Deployment]:
    """The endpoint's traffic set to ``weights`` (checked by the template), then each
    deployment left out deleted (Azure refuses to delete one that still takes traffic)."""
    from mlcloud.specs import Deployment

    split = dict(weights)
    serving = record.details.get("traffic") or {}
    steps = [PlanStep(UPDATE_ENDPOINT, {"traffic": split, "mirrorTraffic": {}})]
    steps += [PlanStep(DELETE_DEPLOYMENT, {"name": d}) for d in serving if d not in split]
    base = record.spec or {"name": record.name, "model": record.model or "unknown"}
    spec = Deployment.model_validate({**base, "traffic": split})
    return provider.make_plan("deploy", record.name, spec, steps)
