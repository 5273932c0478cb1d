"""TrainingJob → the boto3 kwargs of ``CreateTrainingJob`` (pure: reads files, writes nothing).

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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.specs import TrainingJob, spec_hash
from providers.sagemaker import images, instances
from providers.sagemaker.settings import SageMakerSettings

CODE_CHANNEL = "mlcloud_code"
CODE_DIR = f"/opt/ml/input/data/{CODE_CHANNEL}"
CHECKPOINT_LOCAL = "/opt/ml/checkpoints"
MAX_RUNTIME = 28 * 24 * 3600  # SageMaker's ceiling for MaxRuntimeInSeconds
ARG_MAX = 256  # ContainerArgument / ContainerEntrypointString max length (not checked by botocore)
ENV_VALUE_MAX = 512  # TrainingEnvironmentValue max length
BOOTSTRAP_ENV = "MLCLOUD_BOOTSTRAP_"
# Loads a bootstrap script too long for one argument from environment chunks.
BOOTSTRAP_LOADER = (
    "import os;exec(''.join(os.environ[k] for k in sorted(os.environ)"
    f" if k.startswith('{BOOTSTRAP_ENV}')))"
)


@dataclass(frozen=True)
class LocalInput:
    """A local input dir/file and where it goes in S3 (uploaded at submit)."""

    name: str
    bucket: str
    key_prefix: str  # "<prefix>/inputs/<sha256>"
    files: tuple[tuple[str, str], ...]  # (relative name, absolute path)
    sha256: str


def _s3_or_refuse(value: str, what: str, where: str) -> str | None:
    """An s3:// URI as is; None for a local path; other schemes refused."""
    if value.startswith("s3://"):
        return value
    if "://" in value and not value.startswith("file://"):
        raise UnsupportedFeature(
            f"{what} {value!r}", where, hint="use an s3:// URI (or a local path to upload)"
        )
    return None


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


def native_name(job: TrainingJob, content: list[str]) -> str:
    """``<name>-<8 hex>`` over the spec minus machine-local paths, plus the staged content."""
    portable = job.model_copy(update={"source": "", "inputs": {}})
    digest = hashlib.sha256(
        "\n".join([spec_hash(portable, 64), *content, json.dumps(sorted(job.inputs))]).encode()
    ).hexdigest()
    return f"{job.name}-{digest[:8]}"


def build(
    job: TrainingJob, job_id: str, settings: SageMakerSettings, where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (CreateTrainingJob kwargs, private context for submit)."""
    from providers.common.bootstrap import bootstrap_argv
    from providers.common.staging import code_key, pack_source, tree_digest

    if job.elastic:
        raise UnsupportedFeature(
            f"elastic nodes {{min: {job.min_nodes}, max: {job.max_nodes}}}",
            where,
            hint=f"use a fixed count, e.g. nodes: {job.max_nodes}",
        )
    region = settings.resolved_region()
    role = settings.need("role_arn", "run training jobs")
    bucket = settings.need("bucket", "stage the job's code")

    archive = pack_source(Path(job.source))
    key = code_key(settings.prefix, archive)

    instance_type = instances.pick(job.resources, where)
    gpu = job.resources.accelerator_count > 0 or instances.gpus_of(instance_type) > 0
    if job.image:
        image = job.image
    elif job.framework:
        image = images.framework_image(
            job.framework.name, job.framework.version, region, gpu, where
        )
    else:
        image = settings.training_image or images.default_training_image(region, gpu)

    channels: list[dict[str, Any]] = [_channel(CODE_CHANNEL, f"s3://{bucket}/{key}")]
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

    name = native_name(job, content)
    runtime = job.max_runtime_seconds
    if runtime > MAX_RUNTIME:
        raise UnsupportedFeature(
            f"max_runtime {job.max_runtime}", where, hint="SageMaker allows at most 28d"
        )
    stopping: dict[str, int] = {"MaxRuntimeInSeconds": runtime}

    checkpoint = job.checkpoint
    if job.spot and checkpoint is None:
        checkpoint = "auto"
    checkpoint_uri: str | None = None
    if checkpoint == "auto":
        checkpoint_uri = settings.s3_uri(job.name, "checkpoints")
    elif checkpoint is not None:
        checkpoint_uri = _s3_or_refuse(checkpoint, "checkpoint", where)
        if checkpoint_uri is None:
            raise UnsupportedFeature(
                f"checkpoint to the local path {checkpoint!r}",
                where,
                hint="use an s3:// URI, or checkpoint: auto for s3://<bucket>/<prefix>/<name>/",
            )

    output = settings.s3_uri(job.name, "output")
    if job.output:
        output = _s3_or_refuse(job.output, "output", where) or ""
        if not output:
            raise UnsupportedFeature(
                f"output to the local path {job.output!r}", where, hint="use an s3:// URI"
            )

    argv = bootstrap_argv(
        CODE_DIR,
        platform="sagemaker",
        command=list(job.command),
        nproc_per_node=job.procs_per_node,
        distributed=job.distributed,
    )
    argv, bootstrap_env = fit_container_command(argv)

    env: dict[str, str] = dict(job.env)
    env.update(
        {"MLCLOUD_JOB_ID": job_id, "MLCLOUD_PROVIDER_TYPE": "sagemaker"},
    )
    hparams = json.dumps(job.hyperparameters, sort_keys=True, separators=(",", ":"))
    if len(hparams) <= ENV_VALUE_MAX:
        env["MLCLOUD_HPARAMS"] = hparams  # else the launcher reads hyperparameters.json
    if checkpoint_uri:
        env["MLCLOUD_CHECKPOINT"] = "1"
    env.update(bootstrap_env)
    if len(env) > 100:
        raise SpecError("more than 100 environment variables (SageMaker's limit)")
    long_env = [k for k, v in job.env.items() if len(v) > ENV_VALUE_MAX]
    if long_env:
        raise SpecError(f"env.{long_env[0]}: longer than {ENV_VALUE_MAX} characters")

    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": argv[:1],
            "ContainerArguments": argv[1:],
        },
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {
            "InstanceType": instance_type,
            "InstanceCount": job.max_nodes,
            "VolumeSizeInGB": settings.volume_size_gb,
        },
        "StoppingCondition": stopping,
        "Environment": env,
        "Tags": _tags(job, job_id, name, settings),
    }
    if job.hyperparameters:
        request["HyperParameters"] = _hyperparameters(job)
    if job.spot:
        request["EnableManagedSpotTraining"] = True
        stopping["MaxWaitTimeInSeconds"] = min(2 * runtime, 2 * MAX_RUNTIME)
    if checkpoint_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL}
    if job.max_restarts:
        if job.max_restarts > 30:
            raise UnsupportedFeature(
                f"max_restarts {job.max_restarts}", where, hint="SageMaker retries at most 30"
            )
        request["RetryStrategy"] = {"MaximumRetryAttempts": job.max_restarts}
    context = {
        "archive": archive,
        "code_bucket": bucket,
        "code_key": key,
        "uploads": tuple(uploads),
        "native_name": name,
        "region": region,
    }
    return request, context


def _channel(name: str, uri: str) -> dict[str, Any]:
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


def _tags(
    job: TrainingJob, job_id: str, name: str, settings: SageMakerSettings
) -> list[dict[str, str]]:
    tags = {**settings.tags, "mlcloud:job-id": job_id, "mlcloud:job-name": job.name}
    tags["mlcloud:native-name"] = name
    return [{"Key": k, "Value": v} for k, v in tags.items()]
