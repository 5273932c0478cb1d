"""TrainingJob -> an Azure ML command job (``azure.ai.ml.command``) and its REST body (pure).

The plan's request is the JSON the SDK itself puts on the wire for ``jobs.CreateOrUpdate``
(``to_rest_job_object`` serialized with the SDK's ``SdkJSONEncoder``, as
``JobOperations.create_or_update`` does), with an inline image environment shown as the
content-hashed id the SDK registers it under. Two values are only known after upload, and the
SDK fills them in at submit: ``codeId`` (here the local source directory; Azure ML uploads the
staged code as a content-hashed code asset and sends its ARM id) and local ``inputs`` (uploaded
to the workspace datastore, sent as ``azureml://`` URIs); the SDK also adds git
``properties`` of the working directory. Nothing is uploaded here.

Distribution: Azure ML starts **one process per node** (``PyTorchDistribution`` with
``process_count_per_instance=1``) and the stdlib launcher runs torchrun on each node with
``--nproc-per-node``, so restarts, signal handling and the rank variables are the same as on
every other provider; Azure's PyTorch distribution only supplies the rendezvous facts
(``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK``) that the launcher maps onto ``MLCLOUD_*``.

Compute: on ``serverless`` the VM size comes from the catalog (``machines.py``); on a named
cluster the cluster's VM size is used and only ``resources.instance_type.azureml`` is sent.
``spot: true`` sets ``queue_settings.job_tier: Spot`` (honoured by serverless compute; a
cluster's own priority is set on the cluster).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import runtime
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.provider import Plan, PlanStep, new_job_id
from providers.azureml import machines

if TYPE_CHECKING:
    from azure.ai.ml.entities import Command

    from mlcloud.specs import TrainingJob
    from providers.azureml import AzureMLProvider

CREATE_JOB = "jobs.CreateOrUpdate"
TAG_JOB_ID = "mlcloud-job-id"
TAG_ATTEMPT = "mlcloud-attempt"
# Curated Azure ML environments by framework; {v} is "major.minor" of the job's version.
CURATED = {
    "sklearn": "AzureML-sklearn-{v}",
    "pytorch": "AzureML-acpt-pytorch-{v}-cuda12.1",
}
REMOTE_SCHEMES = ("azureml://", "https://", "wasbs://", "abfss://")
OUTPUTS = ("model", "output")  # always present: the launcher maps them onto MLCLOUD_*_DIR


def native_name(job_id: str, attempt: int) -> str:
    """Azure job names are unique per workspace: attempt n > 1 gets its own."""
    return job_id if attempt <= 1 else f"{job_id}-a{attempt}"


def environment(job: TrainingJob, provider: AzureMLProvider) -> Any:
    """An ``azureml:`` environment reference, or an inline Environment for a container image."""
    from azure.ai.ml.entities import Environment

    if job.image:
        return Environment(image=job.image)
    if job.framework is not None:
        template = CURATED.get(job.framework.name)
        if template is None:
            raise UnsupportedFeature(
                f"framework {job.framework.name}",
                provider.where,
                hint="Azure ML has no curated environment for it: set image:, or "
                "environment: in the profile",
            )
        version = ".".join(job.framework.version.split(".")[:2])
        return "azureml:" + template.format(v=version) + "@latest"
    configured = provider.settings.environment
    if not configured:
        raise SpecError(
            "image: an Azure ML job needs an environment",
            hint="set image: or framework: {name, version} in the job, or environment: "
            "in the profile",
        )
    if "/" in configured and not configured.startswith("azureml:"):
        return Environment(image=configured)  # a container image such as myacr.azurecr.io/x:1
    return configured if configured.startswith("azureml:") else f"azureml:{configured}"


def arm_id(provider: AzureMLProvider, kind: str, name: str, version: str | None = None) -> str:
    """The ARM id the SDK resolves a workspace asset to (it sends ids, not names)."""
    conf = provider.settings
    base = (
        f"/subscriptions/{conf.subscription_id}/resourceGroups/{conf.resource_group}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{conf.workspace}/{kind}/{name}"
    )
    return f"{base}/versions/{version}" if version else base


def environment_id(provider: AzureMLProvider, env: Any) -> str:
    """An inline image environment becomes the anonymous, content-hashed version the SDK
    registers (``CliV2AnonymousEnvironment/versions/<sha256>``); references stay as written."""
    if isinstance(env, str):
        return env
    return arm_id(provider, "environments", env.name, env.version)


def _remote(value: str, what: str, provider: AzureMLProvider) -> str:
    if value.startswith(REMOTE_SCHEMES):
        return value.rstrip("/")
    raise UnsupportedFeature(
        f"{what} {value!r}",
        provider.where,
        hint="use an azureml://datastores/<name>/paths/... URI (or https:// blob URL)",
    )


def _inputs(job: TrainingJob, provider: AzureMLProvider) -> dict[str, Any]:
    from azure.ai.ml import Input

    out: dict[str, Any] = {}
    for name, value in sorted(job.inputs.items()):
        if "://" in value and not value.startswith("file://"):
            uri = _remote(value, f"input {name!r}", provider)
            kind = "uri_file" if Path(uri).suffix else "uri_folder"
            out[name] = Input(type=kind, path=uri)
            continue
        path = Path(value.removeprefix("file://"))
        if not path.exists():
            raise SpecError(f"inputs.{name}: {path} does not exist")
        # A local path: the SDK uploads it to the workspace datastore at submit.
        out[name] = Input(type="uri_file" if path.is_file() else "uri_folder", path=str(path))
    return out


def output_base(job: TrainingJob, job_id: str, provider: AzureMLProvider) -> str:
    if job.output:
        return _remote(job.output, "output", provider)
    return f"azureml://datastores/{provider.settings.datastore}/paths/mlcloud/jobs/{job_id}"


def _outputs(job: TrainingJob, job_id: str, provider: AzureMLProvider) -> dict[str, Any]:
    from azure.ai.ml import Output

    base = output_base(job, job_id, provider)
    out = {
        name: Output(type="uri_folder", path=f"{base}/{name}", mode="rw_mount") for name in OUTPUTS
    }
    if job.checkpoint == "auto":
        # Keyed by the mlcloud job id, not the attempt: a re-submitted attempt resumes from it.
        out["checkpoints"] = Output(type="uri_folder", path=f"{base}/checkpoints", mode="rw_mount")
    elif job.checkpoint:
        path = _remote(job.checkpoint, "checkpoint", provider)
        out["checkpoints"] = Output(type="uri_folder", path=path, mode="rw_mount")
    return out


def command_line(job: TrainingJob, inputs: dict[str, Any], outputs: dict[str, Any]) -> str:
    """The launcher line; Azure ML substitutes ``${{inputs.x}}`` / ``${{outputs.y}}``."""
    from providers.common.bootstrap import launcher_args
    from providers.common.staging import LAUNCHER_PATH

    args = launcher_args(
        platform="azureml",
        command=list(job.command),
        nproc_per_node=job.procs_per_node,
        distributed=job.distributed,
        inputs={name: "${{inputs." + name + "}}" for name in inputs},
        outputs={name: "${{outputs." + name + "}}" for name in outputs},
    )
    return shlex.join(["python", LAUNCHER_PATH, *args])


def build_command(
    provider: AzureMLProvider, job: TrainingJob, job_id: str, attempt: int, code: str
) -> Command:
    """The SDK's command job entity for one attempt; ``code`` is a local directory."""
    from azure.ai.ml import PyTorchDistribution, command
    from azure.ai.ml.entities import QueueSettings

    from providers.azureml.clients import quiet_sdk

    quiet_sdk()
    conf = provider.settings
    inputs = _inputs(job, provider)
    outputs = _outputs(job, job_id, provider)
    env = {
        **job.env,
        runtime.ENV_JOB_ID: job_id,
        runtime.ENV_PROVIDER_TYPE: "azureml",
        runtime.ENV_HPARAMS: json.dumps(job.hyperparameters, sort_keys=True),
    }
    kwargs: dict[str, Any] = {}
    if conf.serverless:
        kwargs["instance_type"] = machines.pick(job.resources, provider.where, conf.instance_type)
    else:
        kwargs["compute"] = arm_id(provider, "computes", conf.compute)  # what the SDK sends
        override = machines.explicit(job.resources, None)
        if override:
            kwargs["instance_type"] = override
    if job.distributed:
        kwargs["distribution"] = PyTorchDistribution(process_count_per_instance=1)
    if job.spot:
        kwargs["queue_settings"] = QueueSettings(job_tier="Spot")
    return command(
        name=native_name(job_id, attempt),
        display_name=job.name,
        experiment_name=job.name,
        description=f"mlcloud job {job_id}, attempt {attempt}",
        code=code,
        command=command_line(job, inputs, outputs),
        environment=environment(job, provider),
        environment_variables=env,
        inputs=inputs,
        outputs=outputs,
        instance_count=job.max_nodes,
        timeout=job.max_runtime_seconds,
        tags={**conf.tags, TAG_JOB_ID: job_id, TAG_ATTEMPT: str(attempt)},
        **kwargs,
    )


def rest_body(entity: Command) -> dict[str, Any]:
    """Exactly what ``JobOperations.create_or_update`` serializes for the PUT (pre-upload)."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder
    from azure.ai.ml.entities._job.to_rest_functions import to_rest_job_object

    rest = to_rest_job_object(entity)
    body: dict[str, Any] = json.loads(json.dumps(rest, cls=SdkJSONEncoder, exclude_readonly=True))
    return body


def plan_job(provider: AzureMLProvider, job: TrainingJob) -> Plan:
    from providers.common.staging import source_dir

    if job.elastic:
        raise UnsupportedFeature(
            "elastic nodes {min, max}",
            provider.where,
            hint="Azure ML command jobs run a fixed instance_count: use nodes: N "
            "(max_restarts re-submits the job after a failure)",
        )
    provider.check_job(job)
    source = source_dir(job.source)
    job_id = new_job_id(job.name)
    entity = build_command(provider, job, job_id, attempt=1, code=str(source))
    # The SDK registers an inline image environment before the PUT and sends its id.
    entity.environment = environment_id(provider, entity.environment)
    body = rest_body(entity)
    return Plan(
        provider=provider.name,
        type=provider.type,
        kind="job",
        id=job_id,
        spec=job,
        steps=(PlanStep(CREATE_JOB, body),),
        context={"model_dir": f"{output_base(job, job_id, provider)}/model"},
    )
