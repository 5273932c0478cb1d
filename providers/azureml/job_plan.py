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

Nothing of azure-ai-ml is imported with this module, only inside the functions that build
SDK entities.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import runtime, sensitive
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import Plan, PlanStep, new_job_id
from providers.azureml import machines

if TYPE_CHECKING:
    from azure.ai.ml import Input, Output, PyTorchDistribution
    from azure.ai.ml.entities import Command, Environment, QueueSettings

    from mlcloud.specs import TrainingJob
    from providers.azureml.provider import AzureMLProvider
    from providers.azureml.settings import AzureMLSettings

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


@dataclass(frozen=True)
class JobContext:
    """What planning computed that submitting and the record need."""

    model_dir: str  # where the job's model output lands (azureml:// URI)


@dataclass(frozen=True)
class Compute:
    """Where the job runs: a cluster's ARM id and/or a VM size (``None``: not sent)."""

    compute: str | None
    instance_type: str | None


# ---- refusals --------------------------------------------------------------------------------
# ---- names and ids ---------------------------------------------------------------------------
def native_name(job_id: str, attempt: int) -> str:
    """Azure job names are unique per workspace: attempt n > 1 gets its own."""
    return job_id if attempt <= 1 else f"{job_id}-a{attempt}"


def arm_id(settings: AzureMLSettings, kind: str, name: str, version: str | None = None) -> str:
    """The ARM id the SDK resolves a workspace asset to (it sends ids, not names)."""
    base = (
        f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}/"
        f"providers/Microsoft.MachineLearningServices/workspaces/{settings.workspace}/"
        f"{kind}/{name}"
    )
    return f"{base}/versions/{version}" if version else base


def environment_id(settings: AzureMLSettings, env: str | Environment) -> str:
    """An inline image environment becomes the anonymous, content-hashed version the SDK
    registers (``CliV2AnonymousEnvironment/versions/<sha256>``); references stay as written."""
    if isinstance(env, str):
        return env
    return arm_id(settings, "environments", str(env.name), str(env.version))


# ---- the steps of one command job ------------------------------------------------------------
def environment(job: TrainingJob, provider: AzureMLProvider) -> str | Environment:
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


def _remote(value: str, what: str, where: str) -> str:
    if value.startswith(REMOTE_SCHEMES):
        return value.rstrip("/")
    raise UnsupportedFeature(
        f"{what} {value!r}",
        where,
        hint="use an azureml://datastores/<name>/paths/... URI (or https:// blob URL)",
    )


def inputs(job: TrainingJob, where: str) -> dict[str, Input]:
    """Remote inputs as URIs; local paths are uploaded by the SDK at submit."""
    from azure.ai.ml import Input

    out: dict[str, Input] = {}
    for name, value in sorted(job.inputs.items()):
        if "://" in value and not value.startswith("file://"):
            uri = _remote(value, f"input {name!r}", where)
            kind = "uri_file" if Path(uri).suffix else "uri_folder"
            out[name] = Input(type=kind, path=uri)
            continue
        path = Path(value.removeprefix("file://"))
        if not path.exists():
            raise SpecError(f"inputs.{name}: {path} does not exist")
        out[name] = Input(type="uri_file" if path.is_file() else "uri_folder", path=str(path))
    return out


def output_base(job: TrainingJob, job_id: str, provider: AzureMLProvider) -> str:
    if job.output:
        return _remote(job.output, "output", provider.where)
    return f"azureml://datastores/{provider.settings.datastore}/paths/mlcloud/jobs/{job_id}"


def outputs(job: TrainingJob, job_id: str, provider: AzureMLProvider) -> dict[str, Output]:
    """model/ and output/ under the job's folder, and the checkpoint folder when asked for."""
    from azure.ai.ml import Output

    base = output_base(job, job_id, provider)
    out = {
        name: Output(type="uri_folder", path=f"{base}/{name}", mode="rw_mount") for name in OUTPUTS
    }
    if job.checkpoint == "auto":
        # Keyed by the mlcloud job id, not the attempt: a re-submitted attempt resumes from it.
        out["checkpoints"] = Output(type="uri_folder", path=f"{base}/checkpoints", mode="rw_mount")
    elif job.checkpoint:
        path = _remote(job.checkpoint, "checkpoint", provider.where)
        out["checkpoints"] = Output(type="uri_folder", path=path, mode="rw_mount")
    return out


def command_line(job: TrainingJob, input_names: list[str], output_names: list[str]) -> str:
    """The launcher line; Azure ML substitutes ``${{inputs.x}}`` / ``${{outputs.y}}``."""
    from providers.common.bootstrap import launcher_args
    from providers.common.staging import LAUNCHER_PATH

    args = launcher_args(
        platform="azureml",
        command=list(job.command),
        nproc_per_node=job.procs_per_node,
        distributed=job.distributed,
        inputs={name: "${{inputs." + name + "}}" for name in input_names},
        outputs={name: "${{outputs." + name + "}}" for name in output_names},
    )
    return shlex.join(["python", LAUNCHER_PATH, *args])


# Azure ML command jobs cannot name a Key Vault secret in their environment (secret injection
# is an online-endpoint preview), so the plan names the secret and mlcloud's launcher reads it
# with the compute's managed identity (Key Vault "get" on secrets) before the command starts.
_KEY_VAULT_SECRET = re.compile(
    r"^https://[a-z0-9-]{3,24}\.vault\.(azure\.net|azure\.cn|usgovcloudapi\.net)"
    r"/secrets/[A-Za-z0-9-]{1,127}(/[0-9a-f]{32})?$"
)


def _key_vault_secret(uri: str) -> str | None:
    uri = uri.rstrip("/")
    return uri if _KEY_VAULT_SECRET.match(uri) else None


def env_vars(job: TrainingJob, job_id: str, where: str = "azureml") -> dict[str, str]:
    """The job's env (secrets by reference), then mlcloud's runtime contract."""
    user = sensitive.cloud_env(
        job.env_json,
        where=where,
        store="Azure Key Vault",
        example="https://my-vault.vault.azure.net/secrets/db-password",
        accept=_key_vault_secret,
    )
    return {
        **user,
        runtime.ENV_JOB_ID: job_id,
        runtime.ENV_PROVIDER_TYPE: "azureml",
        runtime.ENV_HPARAMS: json.dumps(job.hyperparameters, sort_keys=True),
    }


def compute(job: TrainingJob, provider: AzureMLProvider) -> Compute:
    """Serverless: a catalog VM size. A cluster: its ARM id (what the SDK sends), and a VM
    size only when the job names one."""
    conf = provider.settings
    if conf.serverless:
        return Compute(None, machines.pick(job.resources, provider.where, conf.instance_type))
    return Compute(arm_id(conf, "computes", conf.compute), machines.explicit(job.resources, None))


def distribution(job: TrainingJob) -> PyTorchDistribution | None:
    from azure.ai.ml import PyTorchDistribution

    return PyTorchDistribution(process_count_per_instance=1) if job.distributed else None


def queue_settings(job: TrainingJob) -> QueueSettings | None:
    from azure.ai.ml.entities import QueueSettings

    return QueueSettings(job_tier="Spot") if job.spot else None


def build_command(
    provider: AzureMLProvider, job: TrainingJob, job_id: str, attempt: int, code: str
) -> Command:
    """The SDK's command job entity for one attempt; ``code`` is a local directory or the id
    of an uploaded code asset."""
    from azure.ai.ml import command

    from providers.azureml.clients import quiet_sdk

    quiet_sdk()
    job_inputs = inputs(job, provider.where)
    job_outputs = outputs(job, job_id, provider)
    where = compute(job, provider)
    return command(
        name=native_name(job_id, attempt),
        display_name=job.name,
        experiment_name=job.name,
        description=f"mlcloud job {job_id}, attempt {attempt}",
        code=code,
        command=command_line(job, list(job_inputs), list(job_outputs)),
        environment=environment(job, provider),
        environment_variables=env_vars(job, job_id, provider.where),
        inputs=job_inputs,
        outputs=job_outputs,
        instance_count=job.max_nodes,
        timeout=job.max_runtime_seconds,
        tags={**provider.settings.tags, TAG_JOB_ID: job_id, TAG_ATTEMPT: str(attempt)},
        compute=where.compute,
        instance_type=where.instance_type,
        distribution=distribution(job),
        queue_settings=queue_settings(job),
    )


def rest_body(entity: Command) -> dict[str, Any]:
    """Exactly what ``JobOperations.create_or_update`` serializes for the PUT (pre-upload)."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import SdkJSONEncoder
    from azure.ai.ml.entities._job.to_rest_functions import to_rest_job_object

    rest = to_rest_job_object(entity)
    body: dict[str, Any] = json.loads(json.dumps(rest, cls=SdkJSONEncoder, exclude_readonly=True))
    return body


# ---- the plan --------------------------------------------------------------------------------
def plan_job(provider: AzureMLProvider, job: TrainingJob) -> Plan[TrainingJob]:
    """One ``jobs.CreateOrUpdate`` step: attempt 1 of the job, its code the local source."""
    from providers.common.staging import source_dir

    source = source_dir(job.source)
    job_id = new_job_id(job.name)
    entity = build_command(provider, job, job_id, attempt=1, code=str(source))
    # The SDK registers an inline image environment before the PUT and sends its id.
    entity.environment = environment_id(provider.settings, entity.environment)
    step = PlanStep(CREATE_JOB, rest_body(entity))
    context = JobContext(model_dir=f"{output_base(job, job_id, provider)}/model")
    return provider.make_plan("job", job_id, job, [step], context=context)
