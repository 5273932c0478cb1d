"""Real-time endpoints: CreateModel/CreateEndpointConfig/CreateEndpoint, blue/green updates via
UpdateEndpoint, Application Auto Scaling target tracking, InvokeEndpoint, and clean removal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import (
    Conflict,
    NotFound,
    NotFoundLocally,
    ProviderError,
    SpecError,
    UnsupportedFeature,
)
from mlcloud.provider import EndpointRecord, EndpointState, Plan, PlanStep
from mlcloud.specs import Deployment, ReplicaRange, spec_hash
from providers.sagemaker import instances, s3, states
from providers.sagemaker.errors import map_error
from providers.sagemaker.waits import wait_until

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider

VARIANT = "AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
DEFAULT_TARGET = 100.0  # invocations per instance per minute
MODEL_CONTENT_TYPE = "application/gzip"


def resource_id(name: str) -> str:
    return f"endpoint/{name}/variant/{VARIANT}"


class Endpoints:
    def __init__(self, provider: SageMakerProvider) -> None:
        self.p = provider

    # ---- plan --------------------------------------------------------------------------------
    def plan(self, dep: Deployment) -> Plan:
        """Pure. ``replicas.target`` is taken as invocations per instance per minute (the metric
        SageMaker's target tracking offers); ``traffic`` splits are refused (one variant)."""
        where = self.p.where
        settings = self.p.settings
        if dep.traffic:
            raise UnsupportedFeature(
                "traffic splits", where, hint="one model per endpoint; redeploy swaps blue/green"
            )
        if dep.min_replicas < 1:
            raise UnsupportedFeature(
                "replicas.min 0 (scale to zero)", where, hint="real-time endpoints need min >= 1"
            )
        image = settings.need("serving_image", "serve models (the mlcloud serving image URI)")
        role = settings.need("role_arn", "create models")
        region = settings.resolved_region()
        archive, model_url, sha, framework = self._model_source(dep, where)
        instance_type = instances.pick(dep.resources, where)
        version = hashlib.sha256(
            json.dumps([spec_hash(dep, 64), model_url, image, instance_type]).encode()
        ).hexdigest()[:8]
        model_name = config_name = f"{dep.name}-{version}"
        tags = [
            {"Key": k, "Value": v}
            for k, v in {**settings.tags, "mlcloud:endpoint": dep.name}.items()
        ]
        env = {**dep.env, "MLCLOUD_SERVING_CONTRACT": "sagemaker"}
        steps = [
            PlanStep(
                "sagemaker.CreateModel",
                {
                    "ModelName": model_name,
                    "ExecutionRoleArn": role,
                    "PrimaryContainer": {
                        "Image": image,
                        "ModelDataUrl": model_url,
                        "Environment": env,
                    },
                    "Tags": tags,
                },
            ),
            PlanStep(
                "sagemaker.CreateEndpointConfig",
                {
                    "EndpointConfigName": config_name,
                    "ProductionVariants": [
                        {
                            "VariantName": VARIANT,
                            "ModelName": model_name,
                            "InstanceType": instance_type,
                            "InitialInstanceCount": dep.min_replicas,
                            "InitialVariantWeight": 1.0,
                        }
                    ],
                    "Tags": tags,
                },
            ),
        ]
        if self._known(dep.name):
            steps.append(
                PlanStep(
                    "sagemaker.UpdateEndpoint",
                    {"EndpointName": dep.name, "EndpointConfigName": config_name},
                )
            )
        else:
            steps.append(
                PlanStep(
                    "sagemaker.CreateEndpoint",
                    {"EndpointName": dep.name, "EndpointConfigName": config_name, "Tags": tags},
                )
            )
        if isinstance(dep.replicas, ReplicaRange) and (
            dep.max_replicas > dep.min_replicas or dep.replicas.target
        ):
            steps += self._autoscaling_steps(dep)
        if settings.model_package_group:
            steps += self._registry_steps(dep, image, model_url, instance_type, sha)
        context = {
            "archive": archive,
            "bucket": settings.bucket,
            "model_key": model_url.removeprefix(f"s3://{settings.bucket}/") if archive else None,
            "model_name": model_name,
            "config_name": config_name,
            "instance_type": instance_type,
            "model_url": model_url,
            "sha256": sha,
            "framework": framework,
            "region": region,
        }
        return Plan(
            provider=self.p.name,
            type=self.p.type,
            kind="deploy",
            id=dep.name,
            spec=dep,
            steps=tuple(steps),
            context=context,
        )

    def _model_source(self, dep: Deployment, where: str) -> tuple[Any, str, str, str | None]:
        """(archive or None, ModelDataUrl, content sha256, framework)."""
        if dep.model.startswith("s3://"):
            if not dep.model.endswith(".tar.gz"):
                raise SpecError(
                    f"model {dep.model!r}: SageMaker needs a model.tar.gz URI",
                    hint="point at the job's model.tar.gz, or at a local model directory",
                )
            return None, dep.model, hashlib.sha256(dep.model.encode()).hexdigest(), None
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
        url = self.p.settings.s3_uri("models", archive.sha256, "model.tar.gz")
        return archive, url, modeldir.digest(root), manifest.get("framework")

    def _known(self, name: str) -> bool:
        try:
            self.p.store.get_endpoint(name, provider=self.p.name)
            return True
        except NotFoundLocally:
            return False

    def _autoscaling_steps(self, dep: Deployment) -> list[PlanStep]:
        assert isinstance(dep.replicas, ReplicaRange)
        rid = resource_id(dep.name)
        return [
            PlanStep(
                "application-autoscaling.RegisterScalableTarget",
                {
                    "ServiceNamespace": "sagemaker",
                    "ResourceId": rid,
                    "ScalableDimension": DIMENSION,
                    "MinCapacity": dep.min_replicas,
                    "MaxCapacity": dep.max_replicas,
                },
            ),
            PlanStep(
                "application-autoscaling.PutScalingPolicy",
                {
                    "PolicyName": f"{dep.name}-invocations",
                    "ServiceNamespace": "sagemaker",
                    "ResourceId": rid,
                    "ScalableDimension": DIMENSION,
                    "PolicyType": "TargetTrackingScaling",
                    "TargetTrackingScalingPolicyConfiguration": {
                        "TargetValue": float(dep.replicas.target or DEFAULT_TARGET),
                        "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                        "ScaleInCooldown": 300,
                        "ScaleOutCooldown": 60,
                    },
                },
            ),
        ]

    def _registry_steps(
        self, dep: Deployment, image: str, model_url: str, instance_type: str, sha: str
    ) -> list[PlanStep]:
        group = self.p.settings.model_package_group
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
                    "InferenceSpecification": {
                        "Containers": [{"Image": image, "ModelDataUrl": model_url}],
                        "SupportedContentTypes": ["application/json"],
                        "SupportedResponseMIMETypes": ["application/json"],
                        "SupportedRealtimeInferenceInstanceTypes": [instance_type],
                    },
                    "ModelApprovalStatus": "Approved",
                    "CustomerMetadataProperties": {"mlcloud-sha256": sha[:64]},
                },
            ),
        ]

    # ---- deploy ------------------------------------------------------------------------------
    def deploy(self, plan: Plan) -> EndpointRecord:
        ctx = plan.context
        dep = plan.spec
        assert isinstance(dep, Deployment)
        sm = self.p.clients.sagemaker
        steps = {s.call: dict(s.request) for s in plan.steps}
        if ctx["archive"] is not None:
            s3.put_if_missing(
                self.p.clients.s3, ctx["bucket"], ctx["model_key"], ctx["archive"].data,
                MODEL_CONTENT_TYPE,
            )  # fmt: skip
        new_model = _create_if_absent(lambda: sm.create_model(**steps["sagemaker.CreateModel"]))
        _create_if_absent(
            lambda: sm.create_endpoint_config(**steps["sagemaker.CreateEndpointConfig"])
        )
        current = self._describe_or_none(dep.name)
        old_config: str | None = None
        if current is None:
            create = steps.get("sagemaker.CreateEndpoint") or {
                "EndpointName": dep.name,
                "EndpointConfigName": ctx["config_name"],
                "Tags": steps["sagemaker.CreateModel"]["Tags"],
            }
            sm.create_endpoint(**create)
            state = EndpointState.CREATING
        else:
            status = current.get("EndpointStatus")
            if status in ("Failed", "OutOfService", "UpdateRollbackFailed", "Deleting"):
                raise Conflict(
                    f"endpoint {dep.name} is {status}; SageMaker cannot update it",
                    provider="sagemaker",
                    code=str(status),
                    hint=f"remove it first: mlcloud undeploy {dep.name}",
                )
            if status != "InService":  # Creating/Updating: UpdateEndpoint would be refused
                current = self._wait_in_service(dep.name)
            old_config = current["EndpointConfigName"]
            state = EndpointState.UPDATING
            if old_config == ctx["config_name"]:
                old_config = None  # same version already serving: nothing to switch
            else:
                # Autoscaling is re-registered after the switch (AWS wants it off during it).
                self._deregister_scaling(dep.name)
                sm.update_endpoint(EndpointName=dep.name, EndpointConfigName=ctx["config_name"])
        record = self._record(dep, plan, state, None, old_config)
        self.p.store.put_endpoint(record)
        desc = self._wait_in_service(dep.name)
        if "application-autoscaling.RegisterScalableTarget" in steps:
            aas = self.p.clients.autoscaling
            aas.register_scalable_target(**steps["application-autoscaling.RegisterScalableTarget"])
            aas.put_scaling_policy(**steps["application-autoscaling.PutScalingPolicy"])
        if old_config:
            self._delete_config_and_models(old_config, keep_model=ctx["model_name"])
        if new_model and "sagemaker.CreateModelPackage" in steps:
            self._register(dep, plan, steps)
        record = self._record(dep, plan, EndpointState.READY, desc, None)
        return self.p.store.put_endpoint(record)

    def _register(self, dep: Deployment, plan: Plan, steps: dict[str, dict[str, Any]]) -> None:
        sm = self.p.clients.sagemaker
        _create_if_absent(
            lambda: sm.create_model_package_group(**steps["sagemaker.CreateModelPackageGroup"])
        )
        arn = sm.create_model_package(**steps["sagemaker.CreateModelPackage"])["ModelPackageArn"]
        self.p.store.add_model_version(
            dep.name,
            plan.context["model_url"],
            sha256=plan.context["sha256"],
            framework=plan.context["framework"],
            source_job=dep.source_job,
            details={"model_package_arn": arn, "provider": self.p.name},
        )

    def _record(
        self,
        dep: Deployment,
        plan: Plan,
        state: EndpointState,
        desc: dict[str, Any] | None,
        old_config: str | None,
    ) -> EndpointRecord:
        ctx = plan.context
        region = ctx["region"]
        details: dict[str, Any] = {
            "endpoint_config": ctx["config_name"],
            "model_name": ctx["model_name"],
            "model_url": ctx["model_url"],
            "instance_type": ctx["instance_type"],
            "region": region,
        }
        if old_config:
            details["previous_config"] = old_config
        if desc:
            details["status"] = desc.get("EndpointStatus")
        return EndpointRecord(
            name=dep.name,
            provider=self.p.name,
            type=self.p.type,
            state=state,
            url=f"https://runtime.sagemaker.{region}.amazonaws.com/endpoints/{dep.name}/invocations",
            model=dep.model,
            model_sha256=ctx["sha256"],
            source_job=dep.source_job,
            native_id=(desc or {}).get("EndpointArn"),
            details=details,
            spec=dep.model_dump(mode="json"),
        )

    def _describe_or_none(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.p.clients.sagemaker.describe_endpoint(EndpointName=name))
        except Exception as e:
            if isinstance(map_error(e), NotFound):
                return None
            raise

    def _wait_in_service(self, name: str) -> dict[str, Any]:
        sm = self.p.clients.sagemaker

        def fetch() -> dict[str, Any]:
            return dict(sm.describe_endpoint(EndpointName=name))

        def done(desc: dict[str, Any]) -> bool:
            status = desc.get("EndpointStatus")
            if status in ("Failed", "OutOfService", "UpdateRollbackFailed"):
                raise ProviderError(
                    f"endpoint {name} is {status}: {desc.get('FailureReason', '')}",
                    provider="sagemaker",
                    code=status,
                )
            return status == "InService"

        settings = self.p.settings
        return wait_until(
            fetch,
            done,
            timeout=settings.endpoint_wait_seconds,
            poll=settings.wait_poll_seconds,
            what=f"endpoint {name} to be InService",
        )

    # ---- status / predict --------------------------------------------------------------------
    def status(self, name: str) -> EndpointRecord:
        desc = self._describe_or_none(name)
        try:
            record = self.p.store.get_endpoint(name, provider=self.p.name)
        except NotFoundLocally:
            record = None
        if desc is None:
            raise NotFound(f"no SageMaker endpoint {name!r}", provider="sagemaker", code="NotFound")
        if record is None:
            record = EndpointRecord(
                name=name, provider=self.p.name, type=self.p.type, state=EndpointState.CREATING
            )
        record.state = states.endpoint_state(desc.get("EndpointStatus"))
        record.native_id = desc.get("EndpointArn")
        record.message = desc.get("FailureReason")
        record.details = {**record.details, "status": desc.get("EndpointStatus")}
        return self.p.store.put_endpoint(record)

    def predict(self, name: str, payload: Any) -> Any:
        body = payload if isinstance(payload, dict) else {"instances": payload}
        resp = self.p.clients.runtime.invoke_endpoint(
            EndpointName=name,
            ContentType="application/json",
            Accept="application/json",
            Body=json.dumps(body).encode(),
        )
        raw = resp["Body"].read()
        try:
            return json.loads(raw)
        except ValueError:
            raise ProviderError(
                f"endpoint {name} answered non-JSON ({resp.get('ContentType')}): {raw[:200]!r}",
                provider="sagemaker",
                code="BadResponse",
            ) from None

    # ---- undeploy ----------------------------------------------------------------------------
    def undeploy(self, name: str) -> EndpointRecord | None:
        sm = self.p.clients.sagemaker
        try:
            record: EndpointRecord | None = self.p.store.get_endpoint(name, provider=self.p.name)
        except NotFoundLocally:
            record = None
        desc = self._describe_or_none(name)
        configs: list[str] = []
        if desc is not None:
            configs.append(desc["EndpointConfigName"])
        if record is not None:
            for key in ("endpoint_config", "previous_config"):
                value = record.details.get(key)
                if value and value not in configs:
                    configs.append(value)
        if desc is None and record is None:
            return None
        self._deregister_scaling(name)
        if desc is not None:
            _ignore_missing(lambda: sm.delete_endpoint(EndpointName=name))
        for config in configs:
            self._delete_config_and_models(config, keep_model=None)
        if record is not None and record.details.get("model_name"):
            _ignore_missing(lambda: sm.delete_model(ModelName=record.details["model_name"]))
        self.p.store.delete_endpoint(name, self.p.name)
        gone = record or EndpointRecord(
            name=name, provider=self.p.name, type=self.p.type, state=EndpointState.DELETED
        )
        gone.state = EndpointState.DELETED
        return gone

    def _delete_config_and_models(self, config: str, keep_model: str | None) -> None:
        sm = self.p.clients.sagemaker
        models: list[str] = []
        try:
            desc = sm.describe_endpoint_config(EndpointConfigName=config)
            models = [v["ModelName"] for v in desc.get("ProductionVariants", [])]
        except Exception as e:
            if not isinstance(map_error(e), NotFound):
                raise
        _ignore_missing(lambda: sm.delete_endpoint_config(EndpointConfigName=config))
        for model in models:
            if model != keep_model:
                _ignore_missing(lambda m=model: sm.delete_model(ModelName=m))

    def _deregister_scaling(self, name: str) -> None:
        aas = self.p.clients.autoscaling
        targets = aas.describe_scalable_targets(
            ServiceNamespace="sagemaker",
            ResourceIds=[resource_id(name)],
            ScalableDimension=DIMENSION,
        ).get("ScalableTargets", [])
        if targets:
            _ignore_missing(
                lambda: aas.deregister_scalable_target(
                    ServiceNamespace="sagemaker", ResourceId=resource_id(name),
                    ScalableDimension=DIMENSION,
                )
            )  # fmt: skip


def _create_if_absent(call: Any) -> bool:
    """Run a create; "already exists" is success (names are content hashes). True if created."""
    try:
        call()
        return True
    except Exception as e:
        if isinstance(map_error(e), Conflict):
            return False
        raise


def _ignore_missing(call: Any) -> None:
    try:
        call()
    except Exception as e:
        if not isinstance(map_error(e), NotFound):
            raise
