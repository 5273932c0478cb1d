"""Deployment → the plan of a real-time endpoint (pure: reads the model dir and the store).

The calls, each visible in the printed plan: ``CreateModel`` and ``CreateEndpointConfig`` named
``<endpoint>-<8 hex>`` over the spec, the model's content, the image and the instance type (so
an unchanged redeploy re-uses them); ``CreateEndpoint``, or ``UpdateEndpoint`` (blue/green) when
the store knows the endpoint; Application Auto Scaling target tracking for a replicas range; and
a model package version when the profile names a ``model_package_group``.

``replicas.target`` is taken as invocations per instance per minute (the metric SageMaker's
target tracking offers).

Each model version is one production variant named ``v-<8 hex>`` (the version id of the
endpoint record's ``details["traffic"]``/``["versions"]``). A plain deploy's config has one
variant; ``traffic: {new: W, previous: 100-W}`` makes a config with two, the variant serving now
at weight 100-W beside the new one at W (a canary). ``plan_traffic`` plans a later split: the
weights alone (UpdateEndpointWeightsAndCapacities) when every variant stays, else a config
without the retired variants, the switch to it, and the removal of the replaced config and the
retired variants' models.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import EndpointRecord, Plan, PlanStep
from mlcloud.specs import Deployment, ReplicaRange, spec_hash
from providers.sagemaker import instances
from providers.sagemaker.capture import data_capture_config
from providers.sagemaker.job_plan import Tag
from providers.sagemaker.settings import SageMakerSettings

if TYPE_CHECKING:
    from providers.common.staging import SourceArchive
    from providers.sagemaker.provider import SageMakerProvider

NEW, PREVIOUS = "new", "previous"  # the keys of Deployment.traffic
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
DEFAULT_TARGET = 100.0  # invocations per instance per minute
SERVING_CONTRACT = {"MLCLOUD_SERVING_CONTRACT": "sagemaker"}


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: a local dir packed into ``archive``, or an s3:// tarball."""

    archive: SourceArchive | None  # None: the model is already in S3
    url: str  # ModelDataUrl
    sha256: str  # the model's content digest (of the URI for an s3:// model)
    framework: str | None


@dataclass(frozen=True)
class EndpointContext:
    """The plan's context: what ``endpoints.deploy`` uploads and records."""

    archive: SourceArchive | None
    bucket: str | None
    model_key: str | None  # the archive's key in ``bucket``
    model_name: str
    config_name: str
    variant: str  # the new version's production variant (its version id)
    variants: tuple[Variant, ...]  # the config's variants, as sent (the new one last)
    instance_type: str
    model_url: str
    sha256: str
    framework: str | None
    region: str


@dataclass(frozen=True)
class TrafficContext:
    """What ``endpoints.set_traffic`` needs besides the steps: the split it leaves."""

    weights: dict[str, int]
    retired: tuple[str, ...]  # variants leaving the endpoint


Variant = dict[str, Any]  # a ProductionVariant request


def resource_id(name: str, variant: str) -> str:
    """Application Auto Scaling's id of one variant of the endpoint."""
    return f"endpoint/{name}/variant/{variant}"


def variant_name(model_name: str) -> str:
    """The variant serving a model version: ``v-`` and the version's 8 hex."""
    return "v-" + model_name.rsplit("-", 1)[1]


def plan_deploy(provider: SageMakerProvider, dep: Deployment) -> Plan[Deployment]:
    """The plan; pure but for reading the model dir and asking the store whether ``dep.name``
    is deployed already (then the endpoint is updated, not created)."""
    settings, where = provider.settings, provider.where
    _refuse_unsupported(dep, where)
    image = settings.need("serving_image", "serve models (the mlcloud serving image URI)")
    role = settings.need("role_arn", "create models")
    region = settings.resolved_region()
    source = _model_source(dep, settings, where)
    instance_type = instances.pick(dep.resources, where)
    model_name = f"{dep.name}-{_version(dep, source.url, image, instance_type)}"
    variant = variant_name(model_name)
    tags = _tags(dep, settings)
    known = _known(provider, dep.name)
    variants = _variants(dep, known, variant, model_name, instance_type)
    config_name = model_name if len(variants) == 1 else _config_name(dep.name, variants)
    steps = [
        _create_model(model_name, role, image, source.url, dep, tags),
        _create_endpoint_config(config_name, variants, tags, data_capture_config(dep, settings)),
        _create_or_update_endpoint(dep.name, config_name, tags, known is not None),
        *_autoscaling_steps(dep, variant),
        *_cleanup_steps(known, config_name, variants),
        *_registry_steps(dep, settings, image, source, instance_type),
    ]
    context = EndpointContext(
        archive=source.archive,
        bucket=settings.bucket,
        model_key=source.url.removeprefix(f"s3://{settings.bucket}/") if source.archive else None,
        model_name=model_name,
        config_name=config_name,
        variant=variant,
        variants=tuple(variants),
        instance_type=instance_type,
        model_url=source.url,
        sha256=source.sha256,
        framework=source.framework,
        region=region,
    )
    return provider.make_plan("deploy", dep.name, dep, steps, context=context)


# ---- the steps, in the order plan_deploy takes them ------------------------------------------
def _refuse_unsupported(dep: Deployment, where: str) -> None:
    unknown = sorted(set(dep.traffic or {}) - {NEW, PREVIOUS})
    if unknown:
        raise SpecError(
            f"traffic: unknown keys {unknown}",
            hint=f"give '{NEW}' (this model) and '{PREVIOUS}' (the one serving now) a percent",
        )
    if dep.min_replicas < 1:
        raise UnsupportedFeature(
            "replicas.min 0 (scale to zero)", where, hint="real-time endpoints need min >= 1"
        )


def _model_source(dep: Deployment, settings: SageMakerSettings, where: str) -> ModelSource:
    """An ``s3://…model.tar.gz`` as is; a local model dir verified and packed (uploaded at
    deploy under its content hash)."""
    if dep.model.startswith("s3://"):
        if not dep.model.endswith(".tar.gz"):
            raise SpecError(
                f"model {dep.model!r}: SageMaker needs a model.tar.gz URI",
                hint="point at the job's model.tar.gz, or at a local model directory",
            )
        return ModelSource(None, dep.model, hashlib.sha256(dep.model.encode()).hexdigest(), None)
    if "://" in dep.model:
        raise UnsupportedFeature(
            f"model {dep.model!r}", where, hint="use a local model dir or an s3:// URI"
        )
    from mlcloud import modeldir
    from providers.common.staging import pack_source

    root = Path(dep.model)
    try:
        manifest = modeldir.verify(root)
    except (modeldir.ModelDirError, OSError) as e:
        raise SpecError(f"model {dep.model}: {e}") from None
    archive = pack_source(root, include_runtime=False)
    url = settings.s3_uri("models", archive.sha256, "model.tar.gz")
    framework = manifest.get("framework")
    return ModelSource(archive, url, modeldir.digest(root), str(framework) if framework else None)


def _version(dep: Deployment, model_url: str, image: str, instance_type: str) -> str:
    """8 hex over what the model and its config are made of: same inputs, same names (the
    split is not part of a version: a canary's model is the model a plain deploy makes)."""
    parts = [spec_hash(dep.model_copy(update={"traffic": None}), 64), model_url, image]
    parts.append(instance_type)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:8]


def _tags(dep: Deployment, settings: SageMakerSettings) -> list[Tag]:
    tags = {**settings.tags, "mlcloud:endpoint": dep.name}
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _create_model(
    name: str, role: str, image: str, model_url: str, dep: Deployment, tags: list[Tag]
) -> PlanStep:
    container = {
        "Image": image,
        "ModelDataUrl": model_url,
        "Environment": {**dep.env, **SERVING_CONTRACT},
    }
    return PlanStep(
        "sagemaker.CreateModel",
        {"ModelName": name, "ExecutionRoleArn": role, "PrimaryContainer": container, "Tags": tags},
    )


def _variants(
    dep: Deployment,
    known: EndpointRecord | None,
    variant: str,
    model_name: str,
    instance_type: str,
) -> list[Variant]:
    """The config's production variants: the new one alone, or (a canary) the variant serving
    now at ``traffic.previous`` beside the new one at ``traffic.new``."""
    new: Variant = {
        "VariantName": variant,
        "ModelName": model_name,
        "InstanceType": instance_type,
        "InitialInstanceCount": dep.min_replicas,
        "InitialVariantWeight": 100.0,
    }
    if not dep.traffic or not dep.traffic.get(PREVIOUS):
        return [new]
    previous = _serving_variant(dep.name, known)
    if previous["VariantName"] == variant:
        raise SpecError(
            f"endpoint {dep.name!r} already serves this model as {variant}",
            hint=f"change its share with set_traffic, e.g. {{{variant!r}: 100}}",
        )
    new["InitialVariantWeight"] = float(dep.traffic.get(NEW, 0))
    return [{**previous, "InitialVariantWeight": float(dep.traffic[PREVIOUS])}, new]


def _serving_variant(name: str, known: EndpointRecord | None) -> Variant:
    """The one variant taking traffic now (``traffic.previous`` names it)."""
    traffic = (known.details.get("traffic") or {}) if known else {}
    serving = [v for v, pct in traffic.items() if pct > 0]
    variants = (known.details.get("variants") or {}) if known else {}
    if len(serving) != 1 or serving[0] not in variants:
        raise SpecError(
            f"traffic.{PREVIOUS}: endpoint {name!r} must serve exactly one version now "
            f"(it serves {', '.join(serving) or 'none'})",
            hint="deploy without traffic first, or settle the split with set_traffic",
        )
    return _stored(variants[serving[0]])


def _stored(variant: Variant) -> Variant:
    """A variant the record keeps, in the order a plan prints variants (the weight aside)."""
    keys = ("VariantName", "ModelName", "InstanceType", "InitialInstanceCount")
    return {k: variant[k] for k in keys if k in variant}


def _config_name(endpoint: str, variants: list[Variant]) -> str:
    """A config of several variants: named by what they are and their weights."""
    text = json.dumps(variants, sort_keys=True)
    return f"{endpoint}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _create_endpoint_config(
    name: str, variants: list[Variant], tags: list[Tag], capture: dict[str, Any] | None = None
) -> PlanStep:
    request: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": variants,
        "Tags": tags,
    }
    if capture is not None:  # the deployment's ``capture`` (providers/sagemaker/capture.py)
        request["DataCaptureConfig"] = capture
    return PlanStep("sagemaker.CreateEndpointConfig", request)


def _create_or_update_endpoint(
    name: str, config_name: str, tags: list[Tag], known: bool
) -> PlanStep:
    if known:
        return PlanStep(
            "sagemaker.UpdateEndpoint", {"EndpointName": name, "EndpointConfigName": config_name}
        )
    return PlanStep(
        "sagemaker.CreateEndpoint",
        {"EndpointName": name, "EndpointConfigName": config_name, "Tags": tags},
    )


def _known(provider: SageMakerProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


def _cleanup_steps(
    known: EndpointRecord | None, config_name: str, variants: list[Variant]
) -> list[PlanStep]:
    """After a switch: the replaced config and the models no variant serves any more."""
    old_config = known.details.get("endpoint_config") if known else None
    if known is None or not old_config or old_config == config_name:
        return []
    old_models = {str(v["ModelName"]) for v in (known.details.get("variants") or {}).values()}
    old_models |= {known.details["model_name"]} if known.details.get("model_name") else set()
    keep = {str(v["ModelName"]) for v in variants}
    steps = [PlanStep("sagemaker.DeleteEndpointConfig", {"EndpointConfigName": old_config})]
    steps += [
        PlanStep("sagemaker.DeleteModel", {"ModelName": m}) for m in sorted(old_models - keep)
    ]
    return steps


def _autoscaling_steps(dep: Deployment, variant: str) -> list[PlanStep]:
    """Target tracking on invocations per instance of the new variant, for a replicas range
    or a target."""
    replicas = dep.replicas
    if not isinstance(replicas, ReplicaRange):
        return []
    if dep.max_replicas <= dep.min_replicas and not replicas.target:
        return []
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(dep.name, variant),
        "ScalableDimension": DIMENSION,
    }
    policy = {
        "TargetValue": float(replicas.target or DEFAULT_TARGET),
        "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
        "ScaleInCooldown": 300,
        "ScaleOutCooldown": 60,
    }
    return [
        PlanStep(
            "application-autoscaling.RegisterScalableTarget",
            {**target, "MinCapacity": dep.min_replicas, "MaxCapacity": dep.max_replicas},
        ),
        PlanStep(
            "application-autoscaling.PutScalingPolicy",
            {
                "PolicyName": f"{dep.name}-invocations",
                **target,
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": policy,
            },
        ),
    ]


def _registry_steps(
    dep: Deployment,
    settings: SageMakerSettings,
    image: str,
    source: ModelSource,
    instance_type: str,
) -> list[PlanStep]:
    """A model package version in the profile's group (none when the profile names no group)."""
    group = settings.model_package_group
    if not group:
        return []
    inference = {
        "Containers": [{"Image": image, "ModelDataUrl": source.url}],
        "SupportedContentTypes": ["application/json"],
        "SupportedResponseMIMETypes": ["application/json"],
        "SupportedRealtimeInferenceInstanceTypes": [instance_type],
    }
    return [
        PlanStep(
            "sagemaker.CreateModelPackageGroup",
            {"ModelPackageGroupName": group, "ModelPackageGroupDescription": "mlcloud models"},
        ),
        PlanStep(
            "sagemaker.CreateModelPackage",
            {
                "ModelPackageGroupName": group,
                "ModelPackageDescription": f"mlcloud model served by {dep.name}",
                "InferenceSpecification": inference,
                "ModelApprovalStatus": "Approved",
                "CustomerMetadataProperties": {"mlcloud-sha256": source.sha256[:64]},
            },
        ),
    ]


# ---- a later split (set_traffic) -------------------------------------------------------------
def plan_traffic(
    provider: SageMakerProvider, record: EndpointRecord, weights: dict[str, int]
) -> Plan[Deployment]:
    """The calls that route ``record``'s endpoint as ``weights`` (checked by the template):
    the weights alone when every variant stays; else a config of the kept variants, the switch
    to it, then the replaced config and the retired variants' models removed."""
    name = record.name
    variants: dict[str, Variant] = dict(record.details.get("variants") or {})
    missing = sorted(set(record.details.get("traffic") or {}) - set(variants))
    if missing:
        raise SpecError(
            f"endpoint {name!r}: mlcloud does not know the variants {missing} it serves",
            hint="redeploy it with mlcloud deploy, then split its traffic",
        )
    retired = tuple(v for v in variants if v not in weights)
    spec = _spec_of(record, weights)
    context = TrafficContext(dict(weights), retired)
    if not retired:
        desired = [{"VariantName": v, "DesiredWeight": float(w)} for v, w in weights.items()]
        update = {"EndpointName": name, "DesiredWeightsAndCapacities": desired}
        step = PlanStep("sagemaker.UpdateEndpointWeightsAndCapacities", update)
        return provider.make_plan("deploy", name, spec, [step], context=context)
    kept = [{**_stored(variants[v]), "InitialVariantWeight": float(w)} for v, w in weights.items()]
    config = _config_name(name, kept) if len(kept) > 1 else str(kept[0]["ModelName"])
    tags = _tags(spec, provider.settings)
    steps = [
        _create_endpoint_config(config, kept, tags, data_capture_config(spec, provider.settings)),
        PlanStep("sagemaker.UpdateEndpoint", {"EndpointName": name, "EndpointConfigName": config}),
    ]
    old_config = record.details.get("endpoint_config")
    if old_config and old_config != config:
        steps.append(PlanStep("sagemaker.DeleteEndpointConfig", {"EndpointConfigName": old_config}))
    keep = {str(v["ModelName"]) for v in kept}
    for model in sorted({str(variants[v]["ModelName"]) for v in retired} - keep):
        steps.append(PlanStep("sagemaker.DeleteModel", {"ModelName": model}))
    return provider.make_plan("deploy", name, spec, steps, context=context)


def _spec_of(record: EndpointRecord, weights: dict[str, int]) -> Deployment:
    """The plan's spec: the endpoint's deployment, its traffic the split asked for."""
    base = record.spec or {"name": record.name, "model": record.model or "unknown"}
    spec = Deployment.model_validate({**base, "traffic": None})
    return spec.model_copy(update={"traffic": dict(weights)})
