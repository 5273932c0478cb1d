"""TrainingJob -> the keyword arguments of ``JobSubmissionClient.submit_job`` (pure).

The job's source is the same reproducible archive the clouds stage (``staging.pack_source``),
addressed by the same sha256: ``working_dir`` is ``gcs://_ray_pkg_<sha256>.tar.gz``, a package
in the cluster's own store that ``submit`` uploads only when the cluster lacks it, so unchanged
source uploads nothing. Nothing is uploaded or contacted here.

* one node: the entrypoint is the archive's launcher (``_mlcloud/launcher.py --platform ray``:
  the vendored runtime when the cluster lacks mlcloud, SIGTERM to the whole process group), and
  ``resources`` become the entrypoint's Ray resources (CPUs, GPUs, memory, accelerator type);
* several nodes or ``{min, max}``: the entrypoint is ``mlcloud_ray.elastic`` (a small package
  shipped as ``py_modules``): torchrun agents, one per node, placed by Ray, around the driver's
  rendezvous store; ``resources`` are each node's (``elastic.py``).

Outputs, models and checkpoints live under the profile's ``storage`` (a directory every node
sees), in ``<storage>/jobs/<job id>/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import runtime
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import PlanStep, new_job_id

if TYPE_CHECKING:
    from mlcloud.records import Plan
    from mlcloud.specs import Resources, TrainingJob
    from providers.ray.provider import RayProvider

SUBMIT_JOB = "JobSubmissionClient.submit_job"
PACKAGE_PREFIX = "gcs://_ray_pkg_"
ELASTIC_MODULE = "mlcloud_ray.elastic"
STOP_SLACK = 5  # seconds Ray's SIGKILL of a stopped job waits beyond mlcloud's grace
REMOTE_STORAGE = "/tmp/mlcloud-ray"  # noqa: S108 (node-local default for a cluster's jobs)
META_JOB_ID, META_ATTEMPT, META_NAME = "mlcloud_job_id", "mlcloud_attempt", "mlcloud_name"
# A distributed job's log is its workers' own lines: Ray would collapse repeated lines across
# nodes ("[repeated 2x across cluster]") and colour the "(Agent pid=...)" prefixes.
TRAIN_ENV = {"RAY_DEDUP_LOGS": "0", "RAY_COLOR_PREFIX": "0"}


@dataclass(frozen=True)
class Package:
    """A file ``submit`` puts in the cluster's package store unless it is there already."""

    uri: str  # gcs://_ray_pkg_<sha256>.<ext>
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class RayJobContext:
    packages: tuple[Package, ...]
    job_dir: str  # <storage>/jobs/<id>
    restarts: int  # attempts mlcloud re-submits (0 when torchrun restarts the workers)


def plan_job(provider: RayProvider, job: TrainingJob) -> Plan[TrainingJob]:
    from providers.common.staging import pack_source, source_dir

    where = provider.where
    _refuse(job, where)
    job_id = new_job_id(job.name)
    job_dir = f"{storage_dir(provider)}/jobs/{job_id}"
    archive = pack_source(source_dir(job.source))
    packages = [Package(f"{PACKAGE_PREFIX}{archive.sha256}.tar.gz", archive.data)]
    runtime_env: dict[str, Any] = {
        "working_dir": packages[0].uri,
        "env_vars": _env(provider, job, job_id, job_dir),
    }
    if job.distributed:
        elastic = elastic_package()
        packages.append(elastic)
        runtime_env["py_modules"] = [elastic.uri]
        runtime_env["env_vars"].update(TRAIN_ENV)
        entrypoint, resources = _elastic_argv(job, job_id), {}
    else:
        launcher = ["python", "_mlcloud/launcher.py", "--platform", "ray", "--"]
        entrypoint, resources = [*launcher, *job.command], entrypoint_resources(job.resources)
    request = {
        "entrypoint": shlex.join(entrypoint),
        "submission_id": submission_id(job_id, 1),
        "runtime_env": runtime_env,
        "metadata": metadata(job_id, job.name, 1),
        **resources,
    }
    context = RayJobContext(
        tuple(packages), job_dir, restarts=0 if job.distributed else job.max_restarts
    )
    step = PlanStep(SUBMIT_JOB, request)
    return provider.make_plan("job", job_id, job, (step,), context=context)


# ---- attempts ------------------------------------------------------------------------------------
def submission_id(job_id: str, attempt: int) -> str:
    """The Ray submission id of one attempt: each attempt is its own Ray job."""
    return f"{job_id}-a{attempt}"


def metadata(job_id: str, name: str, attempt: int) -> dict[str, str]:
    return {META_JOB_ID: job_id, META_NAME: name, META_ATTEMPT: str(attempt)}


def attempt_request(request: dict[str, Any], job_id: str, attempt: int) -> dict[str, Any]:
    """The first attempt's request, re-numbered for ``attempt``."""
    meta = {**request["metadata"], META_ATTEMPT: str(attempt)}
    return {**request, "submission_id": submission_id(job_id, attempt), "metadata": meta}


# ---- the pieces --------------------------------------------------------------------------------
def storage_dir(provider: RayProvider) -> str:
    conf = provider.settings
    if conf.storage:
        return conf.storage.rstrip("/")
    return str(provider.store.home / "ray" / "storage") if conf.local else REMOTE_STORAGE


def _refuse(job: TrainingJob, where: str) -> None:
    if job.image is not None:
        raise UnsupportedFeature(
            f"image {job.image!r}",
            where,
            hint="a Ray job runs in the cluster's Python environment: drop image: "
            "(framework: is accepted and means that environment)",
        )


def _path(value: str, what: str, provider: RayProvider) -> str:
    """A path the cluster's nodes see: a URI is refused; on the cluster mlcloud started (this
    machine) a relative path is made absolute and must exist."""
    if "://" in value and not value.startswith("file://"):
        raise UnsupportedFeature(
            f"{what} {value.split('://', 1)[0]}:// URIs",
            provider.where,
            hint="use a directory every node of the cluster sees (a shared disk)",
        )
    path = value.removeprefix("file://")
    if provider.settings.local:
        return str(Path(path).expanduser().resolve())
    if not path.startswith("/"):
        raise SpecError(f"{what}: {path!r} must be an absolute path on the cluster's nodes")
    return path


def _env(provider: RayProvider, job: TrainingJob, job_id: str, job_dir: str) -> dict[str, str]:
    """The job's env, then mlcloud's runtime contract, then how a cancel stops it."""
    grace = provider.settings.cancel_grace
    env = {
        "PYTHONUNBUFFERED": "1",
        **_user_env(job, provider.where),
        runtime.ENV_JOB_ID: job_id,
        runtime.ENV_PROVIDER_TYPE: provider.type,
        runtime.ENV_MODEL_DIR: f"{job_dir}/model",
        runtime.ENV_OUTPUT_DIR: _path(job.output, "output", provider)
        if job.output
        else f"{job_dir}/output",
        runtime.ENV_HPARAMS: json.dumps(job.hyperparameters, sort_keys=True),
        # stop_job: SIGTERM to the entrypoint, SIGKILL after MLCLOUD_GRACE_SECONDS from the
        # launcher (or the elastic driver) to the user's processes; Ray's own SIGKILL a little
        # later, so theirs comes first
        "RAY_JOB_STOP_WAIT_TIME_S": str(math.ceil(grace) + STOP_SLACK),
        "MLCLOUD_GRACE_SECONDS": str(grace),
    }
    if job.checkpoint == "auto":
        env[runtime.ENV_CHECKPOINT_DIR] = f"{job_dir}/checkpoints"
    elif job.checkpoint:
        env[runtime.ENV_CHECKPOINT_DIR] = _path(job.checkpoint, "checkpoint", provider)
    for name, value in sorted(job.inputs.items()):
        path = _path(value, f"input {name!r}", provider)
        if provider.settings.local and not Path(path).exists():
            raise SpecError(f"inputs.{name}: {path} does not exist")
        env[runtime.input_env_name(name)] = path
    return env


def _user_env(job: TrainingJob, where: str) -> dict[str, str]:
    """The job's own variables: values only. A Ray cluster keeps a job's ``env_vars`` in plain
    text in its job table and has no secret store, so references are refused."""
    for name, value in job.env.items():
        if not isinstance(value, str):
            raise UnsupportedFeature(
                f"env.{name}: a secret reference",
                where,
                hint="a Ray job's env_vars are stored in plain text by the cluster: give the "
                "job the secret another way (a file on storage only it can read)",
            )
    return {name: str(value) for name, value in job.env.items()}


def node_resources(job: TrainingJob) -> dict[str, float]:
    """What one node must have for the job: its entrypoint's, or one agent's of a distributed
    job (an agent takes 1 CPU unless ``cpus`` says)."""
    res = job.resources
    need: dict[str, float] = {}
    if res.cpus is not None or job.distributed:
        need["CPU"] = res.cpus if res.cpus is not None else 1.0
    if res.accelerator_count:
        need["GPU"] = float(res.accelerator_count)
    if res.memory_bytes is not None:
        need["memory"] = float(res.memory_bytes)
    if res.accelerator_type:
        need[f"accelerator_type:{res.accelerator_type}"] = 0.001
    return need


def entrypoint_resources(res: Resources) -> dict[str, Any]:
    """``resources`` as the entrypoint's Ray resources (``submit_job`` keyword arguments)."""
    out: dict[str, Any] = {}
    if res.cpus is not None:
        out["entrypoint_num_cpus"] = res.cpus
    if res.accelerator_count:
        out["entrypoint_num_gpus"] = res.accelerator_count
    if res.memory_bytes is not None:
        out["entrypoint_memory"] = res.memory_bytes
    if res.accelerator_type:
        # Ray's convention for "on a node with this accelerator": a sliver of its resource
        out["entrypoint_resources"] = {f"accelerator_type:{res.accelerator_type}": 0.001}
    return out


def _elastic_argv(job: TrainingJob, job_id: str) -> list[str]:
    res = job.resources
    argv = [
        "python", "-m", ELASTIC_MODULE,
        f"--nodes={job.min_nodes}:{job.max_nodes}",
        f"--procs-per-node={job.procs_per_node}",
        f"--max-restarts={job.max_restarts}",
        f"--name={job_id}",
    ]  # fmt: skip
    # resources are one node's: each agent holds them
    if res.cpus is not None:
        argv.append(f"--cpus={res.cpus:g}")
    if res.accelerator_count:
        argv.append(f"--gpus={res.accelerator_count}")
    if res.memory_bytes is not None:
        argv.append(f"--memory={res.memory_bytes}")
    if res.accelerator_type:
        argv.append(f"--accelerator-type={res.accelerator_type}")
    return [*argv, "--", *job.command]


def elastic_package() -> Package:
    """``mlcloud_ray`` (``elastic.py`` of this folder) as a reproducible zip for ``py_modules``."""
    source = (Path(__file__).resolve().parent / "elastic.py").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("mlcloud_ray/__init__.py", b""), ("mlcloud_ray/elastic.py", source)):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    data = buf.getvalue()
    return Package(f"{PACKAGE_PREFIX}{hashlib.sha256(data).hexdigest()}.zip", data)
