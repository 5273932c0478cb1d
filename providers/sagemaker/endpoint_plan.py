"""Deployment → the plan of a real-time endpoint (pure: reads the model dir and the store).

The calls, each visible in the printed plan: ``CreateModel`` and ``CreateEndpointConfig`` named
``<endpoint>-<8 hex>`` over the spec, the model's content, the image and the instance type (so
an unchanged redeploy re-uses them); ``CreateEndpoint``, or ``UpdateEndpoint`` (blue/green) when
the store knows the endpoint; Application Auto Scaling target tracking for a replicas range; and
a model package version when the profile names a ``model_package_group``.

``replicas.target`` is taken as invocations per instance per minute (the metric SageMaker's
target tracking offers); ``traffic`` splits are refused (one variant per endpoint).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud.errors import NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import Plan, PlanStep
from mlcloud.specs import Deployment, ReplicaRange, spec_hash
from providers.sagemaker import instances
from providers.sagemaker.job_plan import Tag
from providers.sagemaker.settings import SageMakerSettings

if TYPE_CHECKING:
    from providers.common.staging import SourceArchive
    from providers.sagemaker.provider import SageMakerProvider

VARIANT = "AllTraffic"
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
    instance_type: str
    model_url: str
    sha256: str
    framework: str | None
    region: str


def resource_id(name: str) -> str:
    """Application Auto Scaling's id of the endpoint's one variant."""
    return f"endpoint/{name}/variant/{VARIANT}"


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
    model_name = config_name = f"{dep.name}-{_version(dep, source.url, image, instance_type)}"
    tags = _tags(dep, settings)
    steps = [
        _create_model(model_name, role, image, source.url, dep, tags),
        _create_endpoint_config(config_name, model_name, instance_type, dep, tags),
        _create_or_update_endpoint(dep.name, config_name, tags, _known(provider, dep.name)),
        *_autoscaling_steps(dep),
        *_registry_steps(dep, settings, image, source, instance_type),
    ]
    context = EndpointContext(
        archive=source.archive,
        bucket=settings.bucket,
        model_key=source.url.removeprefix(f"s3://{settings.bucket}/") if source.archive else None,
        model_name=model_name,
        config_name=config_name,
        instance_type=instance_type,
        model_url=source.url,
        sha256=source.sha256,
        framework=source.framework,
        region=region,
    )
    return provider.make_plan("deploy", dep.name, dep, steps, context=context)


# ---- the steps, in the order plan_deploy takes them ------------------------------------------
def _refuse_unsupported(dep: Deployment, where: str) -> None:
    if dep.traffic:
        raise UnsupportedFeature(
            "traffic splits", where, hint="one model per endpoint; redeploy swaps blue/green"
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
    """8 hex over what the model and its config are made of: same inputs, same names."""
    parts = [spec_hash(dep, 64), model_url, image, instance_type]
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


def _create_endpoint_config(
    name: str, model_name: str, instance_type: str, dep: Deployment, tags: list[Tag]
) -> PlanStep:
    variant = {
        "VariantName": VARIANT,
        "ModelName": model_name,
        "InstanceType": instance_type,
        "InitialInstanceCount": dep.min_replicas,
        "InitialVariantWeight": 1.0,
    }
    return PlanStep(
        "sagemaker.CreateEndpointConfig",
        {"EndpointConfigName": name, "ProductionVariants": [variant], "Tags": tags},
    )


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


def _known(provider: SageMakerProvider, name: str) -> bool:
    try:
        provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return False
    return True


def _autoscaling_steps(dep: Deployment) -> list[PlanStep]:
    """Target tracking on invocations per instance, for a replicas range or a target."""
    replicas = dep.replicas
    if not isinstance(replicas, ReplicaRange):
        return []
    if dep.max_replicas <= dep.min_replicas and not replicas.target:
        return []
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource_id(dep.name),
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
