"""TrainingJob → the plan of one ``CreateTrainingJob`` call (pure: reads files, writes nothing).

Mapping choices, each visible in the printed plan:

* code: the source dir is packed reproducibly (``providers.common.staging``) and delivered as the
  input channel ``mlcloud_code``; the container command is mlcloud's bootstrap
  (``ContainerEntrypoint``/``ContainerArguments``), so the user's command runs unchanged in any
  image with python3, under torchrun across all instances when distributed.
* nodes → ``InstanceCount``; elastic ranges are refused (SageMaker node counts are fixed).
* spot → ``EnableManagedSpotTraining`` with ``MaxWaitTimeInSeconds`` = 2 x max_runtime (room for
  interruptions) and a checkpoint location ("auto" when none is given, so a resumed attempt finds
  its checkpoints).
* max_restarts → ``RetryStrategy.MaximumRetryAttempts`` (1-30); SageMaker retries after internal
  errors and spot reclaims, not after the user's own non-zero exit.
* inputs: ``s3://`` is used as is; a local path is content-hashed and uploaded at submit under
  ``<prefix>/inputs/<sha256>/``.
* the native name is ``<name>-<8 hex>`` over the spec *and* the staged content, so resubmitting
  an unchanged job never duplicates it while an edited train.py makes a new job.

:func:`build` reads top to bottom as the steps of that mapping: resources → instance, image,
code and inputs, the native name, checkpoint, the container command (distribution), the
environment, output, stopping condition (spot), tags, then the optional fields.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict

from mlcloud import sensitive
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import Plan, PlanStep, new_job_id
from mlcloud.specs import TrainingJob, spec_hash
from providers.sagemaker import images, instances
from providers.sagemaker.settings import SageMakerSettings

if TYPE_CHECKING:
    from providers.common.staging import SourceArchive
    from providers.sagemaker.provider import SageMakerProvider

CODE_CHANNEL = "mlcloud_code"
CODE_DIR = f"/opt/ml/input/data/{CODE_CHANNEL}"
CHECKPOINT_LOCAL = "/opt/ml/checkpoints"
MAX_RUNTIME = 28 * 24 * 3600  # SageMaker's ceiling for MaxRuntimeInSeconds
MAX_RETRIES = 30  # SageMaker's ceiling for RetryStrategy.MaximumRetryAttempts
ARG_MAX = 256  # ContainerArgument / ContainerEntrypointString max length (not checked by botocore)
ENV_VALUE_MAX = 512  # TrainingEnvironmentValue max length
BOOTSTRAP_ENV = "MLCLOUD_BOOTSTRAP_"
# Loads a bootstrap script too long for one argument from environment chunks.
BOOTSTRAP_LOADER = (
    "import os;exec(''.join(os.environ[k] for k in sorted(os.environ)"
    f" if k.startswith('{BOOTSTRAP_ENV}')))"
)


# ---- the request, as botocore's service model shapes it --------------------------------------
class S3DataSource(TypedDict):
    S3DataType: str
    S3Uri: str
    S3DataDistributionType: str


class DataSource(TypedDict):
    S3DataSource: S3DataSource


class Channel(TypedDict):
    ChannelName: str
    DataSource: DataSource
    InputMode: str


class AlgorithmSpecification(TypedDict):
    TrainingImage: str
    TrainingInputMode: str
    ContainerEntrypoint: list[str]
    ContainerArguments: list[str]


class ResourceConfig(TypedDict):
    InstanceType: str
    InstanceCount: int
    VolumeSizeInGB: int


class StoppingCondition(TypedDict):
    MaxRuntimeInSeconds: int
    MaxWaitTimeInSeconds: NotRequired[int]


class CheckpointConfig(TypedDict):
    S3Uri: str
    LocalPath: str


class RetryStrategy(TypedDict):
    MaximumRetryAttempts: int


class Tag(TypedDict):
    Key: str
    Value: str


class CreateTrainingJobRequest(TypedDict):
    """The boto3 kwargs of ``sagemaker.create_training_job`` that mlcloud sends."""

    TrainingJobName: str
    RoleArn: str
    AlgorithmSpecification: AlgorithmSpecification
    InputDataConfig: list[Channel]
    OutputDataConfig: dict[str, str]
    ResourceConfig: ResourceConfig
    StoppingCondition: StoppingCondition
    Environment: dict[str, str]
    Tags: list[Tag]
    HyperParameters: NotRequired[dict[str, str]]
    EnableManagedSpotTraining: NotRequired[bool]
    CheckpointConfig: NotRequired[CheckpointConfig]
    RetryStrategy: NotRequired[RetryStrategy]


# ---- what submit needs besides the request ----------------------------------------------------
@dataclass(frozen=True)
class LocalInput:
    """A local input dir/file and where it goes in S3 (uploaded at submit)."""

    name: str
    bucket: str
    key_prefix: str  # "<prefix>/inputs/<sha256>"
    files: tuple[tuple[str, str], ...]  # (relative name, absolute path)
    sha256: str


@dataclass(frozen=True)
class JobContext:
    """The plan's context: the staged code and inputs, uploaded by ``jobs.submit``."""

    archive: SourceArchive
    code_bucket: str
    code_key: str
    uploads: tuple[LocalInput, ...]
    native_name: str
    region: str


@dataclass(frozen=True)
class _Staged:
    """The code archive and the data channels, and the content hashes the native name covers."""

    archive: SourceArchive
    code_key: str
    channels: list[Channel]
    uploads: tuple[LocalInput, ...]
    content: list[str]


# ---- the plan --------------------------------------------------------------------------------
def plan_job(provider: SageMakerProvider, job: TrainingJob) -> Plan[TrainingJob]:
    """The plan: one ``sagemaker.CreateTrainingJob`` step, the staging facts in its context."""
    job_id = new_job_id(job.name)
    request, context = build(job, job_id, provider.settings, provider.where)
    step = PlanStep("sagemaker.CreateTrainingJob", request)
    return provider.make_plan("job", job_id, job, (step,), context=context)


def build(
    job: TrainingJob, job_id: str, settings: SageMakerSettings, where: str
) -> tuple[CreateTrainingJobRequest, JobContext]:
    """Return (CreateTrainingJob kwargs, the context submit needs)."""
    region = settings.resolved_region()
    role = settings.need("role_arn", "run training jobs")
    bucket = settings.need("bucket", "stage the job's code")
    instance_type = instances.pick(job.resources, where)
    image = _image(job, settings, region, instance_type, where)
    staged = _stage(job, settings, bucket, where)
    name = native_name(job, staged.content)
    checkpoint_uri = _checkpoint_uri(job, settings, where)
    argv, bootstrap_env = _container_command(job)
    request: CreateTrainingJobRequest = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": argv[:1],
            "ContainerArguments": argv[1:],
        },
        "InputDataConfig": staged.channels,
        "OutputDataConfig": {"S3OutputPath": _output_path(job, settings, where)},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": job.max_nodes,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": _stopping_condition(job, where),
        "Environment": _environment(job, job_id, checkpoint_uri, bootstrap_env, where),
        "Tags": _tags(job, job_id, name, settings),
    }
    _add_optional_fields(request, job, checkpoint_uri, where)
    context = JobContext(
        archive=staged.archive,
        code_bucket=bucket,
        code_key=staged.code_key,
        uploads=staged.uploads,
        native_name=name,
        region=region,
    )
    return request, context


# ---- the steps, in the order build takes them ------------------------------------------------
def _image(
    job: TrainingJob, settings: SageMakerSettings, region: str, instance_type: str, where: str
) -> str:
    """The job's image; else the framework's AWS image; else the profile's or the default."""
    if job.image:
        return job.image
    gpu = job.resources.accelerator_count > 0 or instances.gpus_of(instance_type) > 0
    if job.framework:
        return images.framework_image(job.framework.name, job.framework.version, region, gpu, where)
    return settings.training_image or images.default_training_image(region, gpu)


def _stage(job: TrainingJob, settings: SageMakerSettings, bucket: str, where: str) -> _Staged:
    """Pack the source (the ``mlcloud_code`` channel) and address each input: ``s3://`` as is,
    a local path by its content hash (uploaded at submit)."""
    from providers.common.staging import code_key, pack_source, tree_digest

    archive = pack_source(Path(job.source))
    key = code_key(settings.prefix, archive)
    channels = [_channel(CODE_CHANNEL, f"s3://{bucket}/{key}")]
    uploads: list[LocalInput] = []
    content = [archive.sha256]
    for name, value in sorted(job.inputs.items()):
        if name == CODE_CHANNEL:
            raise SpecError(f"inputs.{name}: the name {CODE_CHANNEL!r} is reserved by mlcloud")
        uri = _s3_or_refuse(value, f"input {name}", where)
        if uri is None:
            sha, files = tree_digest(Path(value.removeprefix("file://")))
            prefix = settings.key("inputs", sha)
            uploads.append(LocalInput(name, bucket, prefix, files, sha))
            uri = f"s3://{bucket}/{prefix}/"
            content.append(sha)
        channels.append(_channel(name, uri))
    return _Staged(archive, key, channels, tuple(uploads), content)


def native_name(job: TrainingJob, content: list[str]) -> str:
    """``<name>-<8 hex>`` over the spec minus machine-local paths, plus the staged content."""
    portable = job.model_copy(update={"source": "", "inputs": {}})
    digest = hashlib.sha256(
        "\n".join([spec_hash(portable, 64), *content, json.dumps(sorted(job.inputs))]).encode()
    ).hexdigest()
    return f"{job.name}-{digest[:8]}"


def _checkpoint_uri(job: TrainingJob, settings: SageMakerSettings, where: str) -> str | None:
    """Where checkpoints sync to: spot jobs always get one ("auto" unless given)."""
    checkpoint = job.checkpoint
    if job.spot and checkpoint is None:
        checkpoint = "auto"
    if checkpoint is None:
        return None
    if checkpoint == "auto":
        return settings.s3_uri(job.name, "checkpoints")
    uri = _s3_or_refuse(checkpoint, "checkpoint", where)
    if uri is None:
        raise UnsupportedFeature(
            f"checkpoint to the local path {checkpoint!r}",
            where,
            hint="use an s3:// URI, or checkpoint: auto for s3://<bucket>/<prefix>/<name>/",
        )
    return uri


def _container_command(job: TrainingJob) -> tuple[list[str], dict[str, str]]:
    """mlcloud's bootstrap (torchrun across the instances when distributed), fitted into
    SageMaker's argument limits: (argv, the environment chunks the loader reads)."""
    from providers.common.bootstrap import bootstrap_argv

    argv = bootstrap_argv(
        CODE_DIR,
        platform="sagemaker",
        command=list(job.command),
        nproc_per_node=job.procs_per_node,
        distributed=job.distributed,
    )
    return fit_container_command(argv)


def fit_container_command(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split argv into entrypoint/arguments within SageMaker's 256-character item limit.

    The bootstrap's inline ``python3 -c SCRIPT`` is longer than one argument may be, so the script
    travels in ``MLCLOUD_BOOTSTRAP_<n>`` environment chunks and a short loader execs it.
    """
    env: dict[str, str] = {}
    out = list(argv)
    if len(out) > 2 and out[1] == "-c" and len(out[2]) > ARG_MAX:
        script = out[2]
        chunks = [script[i : i + ENV_VALUE_MAX] for i in range(0, len(script), ENV_VALUE_MAX)]
        if len(chunks) > 9:
            raise SpecError("mlcloud's bootstrap script is too long for the SageMaker environment")
        env = {f"{BOOTSTRAP_ENV}{i}": chunk for i, chunk in enumerate(chunks)}
        out[2] = BOOTSTRAP_LOADER
    too_long = [a for a in out if len(a) > ARG_MAX]
    if too_long:
        raise SpecError(
            f"command argument longer than {ARG_MAX} characters (SageMaker's limit): "
            f"{too_long[0][:40]}…"
        )
    if len(out) > 101:
        raise SpecError("command has more than 100 arguments (SageMaker's limit)")
    return out, env


# A Secrets Manager secret or an SSM parameter (SecureString): SageMaker cannot put either
# into a training container's environment, so the plan names it and mlcloud's launcher reads it
# with the job's role (secretsmanager:GetSecretValue / ssm:GetParameter) before the command.
_SECRET_ARN = re.compile(
    r"^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+"
    r"|ssm:[a-z0-9-]+:\d{12}:parameter/[A-Za-z0-9/_.-]+)$"
)


def _secret_arn(uri: str) -> str | None:
    return uri if _SECRET_ARN.match(uri) and len(uri) <= ENV_VALUE_MAX else None


def _environment(
    job: TrainingJob,
    job_id: str,
    checkpoint_uri: str | None,
    bootstrap_env: dict[str, str],
    where: str,
) -> dict[str, str]:
    """The user's env (secrets by reference), mlcloud's own variables, then the bootstrap
    chunks; within limits."""
    env = sensitive.cloud_env(
        job.env_json,
        where=where,
        store="AWS Secrets Manager or SSM Parameter Store",
        example="arn:aws:secretsmanager:us-east-1:123456789012:secret:db-password",
        accept=_secret_arn,
    )
    env.update({"MLCLOUD_JOB_ID": job_id, "MLCLOUD_PROVIDER_TYPE": "sagemaker"})
    hparams = json.dumps(job.hyperparameters, sort_keys=True, separators=(",", ":"))
    if len(hparams) <= ENV_VALUE_MAX:
        env["MLCLOUD_HPARAMS"] = hparams  # else the launcher reads hyperparameters.json
    if checkpoint_uri:
        env["MLCLOUD_CHECKPOINT"] = "1"
    env.update(bootstrap_env)
    if len(env) > 100:
        raise SpecError("more than 100 environment variables (SageMaker's limit)")
    long_env = [k for k, v in job.env_values.items() if len(v) > ENV_VALUE_MAX]
    if long_env:
        raise SpecError(f"env.{long_env[0]}: longer than {ENV_VALUE_MAX} characters")
    return env


def _output_path(job: TrainingJob, settings: SageMakerSettings, where: str) -> str:
    if not job.output:
        return settings.s3_uri(job.name, "output")
    output = _s3_or_refuse(job.output, "output", where)
    if not output:
        raise UnsupportedFeature(
            f"output to the local path {job.output!r}", where, hint="use an s3:// URI"
        )
    return output


def _stopping_condition(job: TrainingJob, where: str) -> StoppingCondition:
    """max_runtime; for spot also the wait, twice the runtime (room for interruptions)."""
    runtime = job.max_runtime_seconds
    if runtime > MAX_RUNTIME:
        raise UnsupportedFeature(
            f"max_runtime {job.max_runtime}", where, hint="SageMaker allows at most 28d"
        )
    stopping: StoppingCondition = {"MaxRuntimeInSeconds": runtime}
    if job.spot:
        stopping["MaxWaitTimeInSeconds"] = min(2 * runtime, 2 * MAX_RUNTIME)
    return stopping


def _tags(job: TrainingJob, job_id: str, name: str, settings: SageMakerSettings) -> list[Tag]:
    tags = {**settings.tags, "mlcloud:job-id": job_id, "mlcloud:job-name": job.name}
    tags["mlcloud:native-name"] = name
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _add_optional_fields(
    request: CreateTrainingJobRequest, job: TrainingJob, checkpoint_uri: str | None, where: str
) -> None:
    """Hyperparameters, spot, checkpoints and retries: present only when the job asks."""
    if job.hyperparameters:
        request["HyperParameters"] = _hyperparameters(job)
    if job.spot:
        request["EnableManagedSpotTraining"] = True
    if checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL}
    if job.max_restarts:
        if job.max_restarts > MAX_RETRIES:
            raise UnsupportedFeature(
                f"max_restarts {job.max_restarts}", where, hint="SageMaker retries at most 30"
            )
        request["RetryStrategy"] = {"MaximumRetryAttempts": job.max_restarts}


# ---- small pieces ----------------------------------------------------------------------------
def _s3_or_refuse(value: str, what: str, where: str) -> str | None:
    """An s3:// URI as is; None for a local path; other schemes refused."""
    if value.startswith("s3://"):
        return value
    if "://" in value and not value.startswith("file://"):
        raise UnsupportedFeature(
            f"{what} {value!r}", where, hint="use an s3:// URI (or a local path to upload)"
        )
    return None


def _channel(name: str, uri: str) -> Channel:
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def _hyperparameters(job: TrainingJob) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in job.hyperparameters.items():
        text = json.dumps(value, sort_keys=True)
        if len(text) > 2500 or len(key) > 256:
            raise SpecError(f"hyperparameters.{key}: longer than SageMaker allows (2500 chars)")
        out[key] = text
    if len(out) > 100:
        raise SpecError("more than 100 hyperparameters (SageMaker's limit)")
    return out
