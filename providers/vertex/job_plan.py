"""TrainingJob -> the proto-JSON of ``aiplatform_v1.CreateCustomJobRequest`` (pure).

The request is built as plain proto-JSON (:mod:`providers.vertex.protojson`: camelCase, enum
names, int64 as strings) without importing the Vertex SDK, so ``--dry-run`` stays cheap;
``jobs.submit`` parses this very dict into the proto (strictly: unknown fields are an error)
and sends it. Nothing is uploaded here: the source archive and local inputs are hashed, and their
content-addressed GCS keys go into the plan so that submitting uploads only what the bucket lacks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud import runtime, sensitive
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import Plan, PlanStep, new_job_id
from providers.vertex import machines

if TYPE_CHECKING:
    from mlcloud.specs import TrainingJob
    from providers.common.staging import SourceArchive
    from providers.vertex.protojson import (
        ContainerSpec,
        CreateCustomJobRequest,
        CustomJob,
        CustomJobSpec,
        Scheduling,
        WorkerPoolSpec,
    )
    from providers.vertex.provider import VertexProvider
    from providers.vertex.settings import VertexSettings

CREATE_CUSTOM_JOB = "JobService.CreateCustomJob"
LABEL_JOB_ID = "mlcloud-job-id"
# Prebuilt Vertex training containers by framework; {v} is the version as "2-3".
_IMAGES = {
    ("pytorch", True): "us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.{v}.py310:latest",
    ("pytorch", False): "us-docker.pkg.dev/vertex-ai/training/pytorch-xla.{v}.py310:latest",
    ("sklearn", False): "us-docker.pkg.dev/vertex-ai/training/sklearn-cpu.{v}:latest",
    ("xgboost", False): "us-docker.pkg.dev/vertex-ai/training/xgboost-cpu.{v}:latest",
}


@dataclass(frozen=True)
class Upload:
    """A local file that ``submit`` puts at ``gs://<bucket>/<key>`` unless it is already there."""

    path: str
    key: str
    prefix: str  # the content-hashed folder it belongs to (one completion marker per folder)


@dataclass(frozen=True)
class VertexJobContext:
    """What planning computed and submitting needs: the archive to stage and where it goes."""

    archive: SourceArchive
    code_key: str
    uploads: tuple[Upload, ...]
    base_output: str  # gs:// prefix of the job's outputs (AIP_MODEL_DIR is <base>/model)


def gcs_path(bucket: str, key: str) -> str:
    """Where Vertex's Cloud Storage FUSE mount shows ``gs://bucket/key`` inside the container."""
    return f"/gcs/{bucket}/{key}"


def plan_job(provider: VertexProvider, job: TrainingJob) -> Plan[TrainingJob]:
    from providers.common.staging import code_key, pack_source, source_dir

    conf, where = provider.settings, provider.where
    source = source_dir(job.source)
    _check_output(job, where)
    job_id = new_job_id(job.name)
    archive = pack_source(source)
    code = code_key(conf.prefix, archive)
    base_output = (job.output or f"gs://{conf.bucket}/{conf.prefix}/jobs/{job_id}").rstrip("/")

    machine = machines.pick(job.resources, where)
    image = _image(job, conf, gpu=machine.accelerator_count > 0, where=where)
    inputs, uploads = _inputs(job, conf, where)
    env = _env(job, job_id, base_output, inputs, where)
    container: ContainerSpec = {
        "imageUri": image,
        "command": _command(job, conf, code),
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    custom_job: CustomJob = {
        "displayName": job_id,
        "jobSpec": _job_spec(job, conf, _pools(job, conf, machine, container), base_output),
        "labels": {**conf.labels, LABEL_JOB_ID: job_id, "mlcloud-name": job.name},
    }
    request: CreateCustomJobRequest = {"parent": conf.parent, "customJob": custom_job}
    context = VertexJobContext(archive, code, tuple(uploads), base_output)
    step = PlanStep(call=CREATE_CUSTOM_JOB, request=request)
    return provider.make_plan("job", job_id, job, (step,), context=context)


# ---- the steps, in the order plan_job takes them ----------------------------------------------
def _check_output(job: TrainingJob, where: str) -> None:
    if job.output is not None and not job.output.startswith("gs://"):
        raise UnsupportedFeature(
            f"output {job.output!r}", where, hint="use a gs:// URI or leave output unset"
        )


def _image(job: TrainingJob, conf: VertexSettings, gpu: bool, where: str) -> str:
    """The job's image, the profile's, or Vertex's prebuilt container for the framework."""
    if job.image:
        return job.image
    if conf.training_image:
        return conf.training_image
    if job.framework is None:
        raise SpecError(
            "image: a Vertex job needs a container image",
            hint="set image: or framework: {name, version} in the job, "
            "or training_image: in the profile",
        )
    template = _IMAGES.get((job.framework.name, gpu)) or _IMAGES.get((job.framework.name, False))
    if template is None or (gpu and (job.framework.name, True) not in _IMAGES):
        raise UnsupportedFeature(
            f"framework {job.framework.name} with GPUs",
            where,
            hint="set image: to a GPU container of your own",
        )
    major_minor = "-".join(job.framework.version.split(".")[:2])
    return template.format(v=major_minor)


def _inputs(
    job: TrainingJob, conf: VertexSettings, where: str
) -> tuple[dict[str, str], list[Upload]]:
    """Each input as a gs:// URI; local ones under their content digest, with the uploads."""
    from providers.common.staging import tree_digest

    uris: dict[str, str] = {}
    uploads: list[Upload] = []
    for name, value in sorted(job.inputs.items()):
        if value.startswith("gs://"):
            uris[name] = value
            continue
        if "://" in value and not value.startswith("file://"):
            raise UnsupportedFeature(
                f"input {name!r} from {value.split('://', 1)[0]}://",
                where,
                hint="copy the data to Cloud Storage and use its gs:// URI",
            )
        path = Path(value.removeprefix("file://"))
        if not path.exists():
            raise SpecError(f"inputs.{name}: {path} does not exist")
        digest, files = tree_digest(path)
        base = f"{conf.prefix}/inputs/{digest}"
        uploads += [Upload(f, f"{base}/{rel}", base) for rel, f in files]
        uris[name] = f"gs://{conf.bucket}/{base}" + (f"/{path.name}" if path.is_file() else "")
    return uris, uploads


def _env(
    job: TrainingJob, job_id: str, base_output: str, inputs: dict[str, str], where: str
) -> dict[str, str]:
    """The job's env (secrets by reference), then mlcloud's runtime contract (job id,
    hyperparameters, dirs, inputs)."""
    user = sensitive.cloud_env(
        job.env_json,
        where=where,
        store="Secret Manager",
        example="projects/my-project/secrets/db-password/versions/latest",
        accept=_secret_version,
    )
    env = {
        **user,
        runtime.ENV_JOB_ID: job_id,
        runtime.ENV_PROVIDER_TYPE: "vertex",
        runtime.ENV_HPARAMS: json.dumps(job.hyperparameters, sort_keys=True),
        runtime.ENV_OUTPUT_DIR: f"{base_output}/output",
        **{runtime.input_env_name(k): v for k, v in inputs.items()},
    }
    checkpoint = _checkpoint(job, base_output, where)
    if checkpoint:
        env[runtime.ENV_CHECKPOINT_DIR] = checkpoint
    return env


# A CustomJob's containers have no Secret Manager variables (only a Reasoning Engine's do), so
# the plan names the version and mlcloud's launcher reads it with the job's service account
# (roles/secretmanager.secretAccessor) before the command starts.
_SECRET_VERSION = re.compile(
    r"^projects/[^/\s]+/secrets/[A-Za-z0-9_-]+(/versions/[A-Za-z0-9_-]+)?$"
)


def _secret_version(uri: str) -> str | None:
    """``projects/P/secrets/S[/versions/V]`` (default version: latest)."""
    if not _SECRET_VERSION.match(uri):
        return None
    return uri if "/versions/" in uri else f"{uri}/versions/latest"


def _checkpoint(job: TrainingJob, base_output: str, where: str) -> str | None:
    if job.checkpoint is None:
        return None
    if job.checkpoint == "auto":
        return f"{base_output}/checkpoints"  # Vertex's own AIP_CHECKPOINT_DIR location
    if not job.checkpoint.startswith("gs://"):
        raise UnsupportedFeature(
            f"checkpoint {job.checkpoint!r}",
            where,
            hint="use a gs:// URI, or checkpoint: auto for a location under the job's output",
        )
    return job.checkpoint


def _command(job: TrainingJob, conf: VertexSettings, code: str) -> list[str]:
    """The container command: unpack the code archive from the GCS mount, then launch."""
    from providers.common.bootstrap import bootstrap_argv

    return bootstrap_argv(
        gcs_path(conf.bucket, code),
        platform="vertex",
        command=list(job.command),
        nproc_per_node=job.procs_per_node,
        distributed=job.distributed,
    )


def _pools(
    job: TrainingJob, conf: VertexSettings, machine: machines.Machine, container: ContainerSpec
) -> list[WorkerPoolSpec]:
    """Distribution: pool 0 is the chief; a multi-node job adds one pool of the other nodes."""

    def pool(replicas: int) -> WorkerPoolSpec:
        return {
            "machineSpec": machine.spec(),
            "replicaCount": str(replicas),  # int64: a string in proto-JSON
            "diskSpec": {"bootDiskType": conf.boot_disk_type, "bootDiskSizeGb": conf.boot_disk_gb},
            "containerSpec": container,
        }

    pools = [pool(1)]
    if job.max_nodes > 1:
        pools.append(pool(job.max_nodes - 1))
    return pools


def _job_spec(
    job: TrainingJob, conf: VertexSettings, pools: list[WorkerPoolSpec], base_output: str
) -> CustomJobSpec:
    """Scheduling (timeout, restarts, spot), outputs, and the profile's identity and network."""
    scheduling: Scheduling = {"timeout": f"{job.max_runtime_seconds}s"}
    if job.max_restarts:
        scheduling["restartJobOnWorkerRestart"] = True
    if job.spot:
        scheduling["strategy"] = "SPOT"
    spec: CustomJobSpec = {
        "workerPoolSpecs": pools,
        "scheduling": scheduling,
        "baseOutputDirectory": {"outputUriPrefix": base_output},
    }
    if conf.service_account:
        spec["serviceAccount"] = conf.service_account
    if conf.network:
        spec["network"] = conf.network
    return spec
