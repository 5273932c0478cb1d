"""``plan_job`` of local jobs: the exact argv/env/cwd of every process, nothing started.

A plain job is one process. A distributed one is one ``torchrun --no-python`` agent per node
started on this machine, with a c10d rendezvous whose TCPStore the supervisor hosts on 127.0.0.1
(see ``rdzv_store.py``), or the profile's ``rdzv_endpoint`` for a multi-machine run. Each step's
``env`` is everything set on top of the environment the job inherits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud import runtime
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import Plan, PlanStep, new_job_id

if TYPE_CHECKING:
    from mlcloud.specs import TrainingJob
    from providers.local.provider import LocalProvider

RDZV_CONF = "join_timeout=60,last_call_timeout=1,close_timeout=10"
#: where the worker shim records attempts (the state store), in every process of a job
ENV_STATE_DB = "MLCLOUD_STATE_DB"
_LOCAL_SCHEMES = ("file://",)


@dataclass(frozen=True)
class Rendezvous:
    """The loopback TCPStore the supervisor hosts for a distributed job."""

    host: str
    port: int


@dataclass(frozen=True)
class LocalJobContext:
    """What ``submit_job`` needs beyond the steps."""

    job_dir: str
    rdzv: Rendezvous | None
    restarts: int  # attempts the supervisor adds (torchrun restarts distributed jobs itself)
    grace: float  # SIGTERM → SIGKILL on cancel, seconds
    python: str | None  # the supervisor's interpreter; None: this one


def job_dir(home: Path, job_id: str) -> Path:
    return home / "jobs" / job_id


def gpu_count() -> int:
    """GPUs visible on this machine, without importing torch."""
    proc_dir = Path("/proc/driver/nvidia/gpus")
    if proc_dir.is_dir():
        return len(list(proc_dir.iterdir()))
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def plan_job(provider: LocalProvider, job: TrainingJob) -> Plan[TrainingJob]:
    conf = provider.settings
    job_id = new_job_id(job.name)
    home = job_dir(provider.store.home, job_id)
    source = _source_dir(job, provider.where)
    env = {
        **_contract_env(provider, job, job_id, home),
        **_input_env(job, provider.where),
        ENV_STATE_DB: str(provider.store.path),
    }
    nodes_here = conf.nodes_here or (1 if conf.rdzv_endpoint else job.max_nodes)
    _check_gpus(job, nodes_here, provider.where)
    rdzv: Rendezvous | None = None
    if not job.distributed:
        steps = [_popen(list(job.command), {**env, **_visible_gpus(job, 0)}, source)]
    else:
        # Loopback rendezvous hosted by the supervisor, unless the profile names a head node.
        rdzv = None if conf.rdzv_endpoint else _loopback_rendezvous()
        argv = _torchrun_argv(job, job_id, conf.python, rdzv, conf.rdzv_endpoint)
        hosted = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if rdzv else {}
        steps = [
            _popen(argv, {**env, **hosted, **_visible_gpus(job, node)}, source)
            for node in range(nodes_here)
        ]
    context = LocalJobContext(
        job_dir=str(home),
        rdzv=rdzv,
        restarts=0 if job.distributed else job.max_restarts,
        grace=conf.cancel_grace,
        python=conf.python,
    )
    volatile = (str(rdzv.port),) if rdzv else ()
    return provider.make_plan("job", job_id, job, steps, context=context, volatile=volatile)


# ---- the steps, top to bottom ---------------------------------------------------------------
def _local_path(value: str, what: str, where: str) -> str:
    if "://" in value and not value.startswith(_LOCAL_SCHEMES):
        scheme = value.split("://", 1)[0]
        raise UnsupportedFeature(
            f"{what} {scheme}:// URIs",
            where,
            hint="use a local path or file:// URI, or run on the cloud that holds the data",
        )
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


def _source_dir(job: TrainingJob, where: str) -> Path:
    source = Path(_local_path(job.source, "source", where))
    if not source.is_dir():
        raise SpecError(f"source: {source} is not a directory", hint="set source: to your code dir")
    return source


def _contract_env(
    provider: LocalProvider, job: TrainingJob, job_id: str, home: Path
) -> dict[str, str]:
    """The mlcloud runtime contract (``mlcloud.runtime``) over the job's own ``env``."""
    where = provider.where
    output = _local_path(job.output, "output", where) if job.output else str(home / "output")
    env = {
        "PYTHONUNBUFFERED": "1",
        **job.env,
        runtime.ENV_JOB_ID: job_id,
        runtime.ENV_PROVIDER_TYPE: provider.type,
        runtime.ENV_MODEL_DIR: str(home / "model"),
        runtime.ENV_OUTPUT_DIR: output,
        runtime.ENV_HPARAMS: json.dumps(job.hyperparameters, sort_keys=True),
        runtime.ENV_NUM_NODES: str(job.min_nodes),
        runtime.ENV_NODE_RANK: "0",
    }
    if job.checkpoint:
        env[runtime.ENV_CHECKPOINT_DIR] = (
            str(home / "checkpoints")
            if job.checkpoint == "auto"
            else _local_path(job.checkpoint, "checkpoint", where)
        )
    return env


def _input_env(job: TrainingJob, where: str) -> dict[str, str]:
    env = {}
    for name, value in sorted(job.inputs.items()):
        path = _local_path(value, f"input {name!r}", where)
        if not Path(path).exists():
            raise SpecError(f"inputs.{name}: {path} does not exist")
        env[runtime.input_env_name(name)] = path
    return env


def _check_gpus(job: TrainingJob, nodes_here: int, where: str) -> None:
    gpus = job.resources.accelerator_count
    if not gpus:
        return
    have, need = gpu_count(), gpus * nodes_here
    if have < need:
        raise UnsupportedFeature(
            f"accelerators={job.resources.accelerators!r} ({need} GPU(s) on this machine)",
            where,
            hint=f"this machine has {have} GPU(s): drop resources.accelerators "
            "(--set resources.accelerators=null) or run on a GPU provider",
        )


def _visible_gpus(job: TrainingJob, node: int) -> dict[str, str]:
    """Node ``node``'s share of this machine's GPUs (nothing for a CPU job)."""
    gpus = job.resources.accelerator_count
    if not gpus:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(node * gpus, (node + 1) * gpus))}


def _loopback_rendezvous() -> Rendezvous:
    from providers.local.endpoint_net import free_port  # distributed jobs only

    return Rendezvous("127.0.0.1", free_port())


def _torchrun_argv(
    job: TrainingJob,
    job_id: str,
    python: str | None,
    rdzv: Rendezvous | None,
    rdzv_endpoint: str | None,
) -> list[str]:
    """A torchrun agent. With a hosted ``rdzv`` the agent joins the supervisor's loopback store
    (``is_host=false``) and its workers make their own store on loopback."""
    python = python or sys.executable
    endpoint = f"{rdzv.host}:{rdzv.port}" if rdzv else rdzv_endpoint
    return [
        python, "-m", "torch.distributed.run",
        f"--nnodes={job.min_nodes}:{job.max_nodes}",
        f"--nproc-per-node={job.procs_per_node}",
        f"--max-restarts={job.max_restarts}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={job_id}",
        f"--rdzv-conf={RDZV_CONF}" + (",is_host=false" if rdzv else ""),
        *(["--local-addr=127.0.0.1"] if rdzv else []),
        "--monitor-interval=0.5",
        "--no-python",
        python, "-m", "providers.local.worker",
        *job.command,
    ]  # fmt: skip


def _popen(argv: list[str], env: dict[str, str], cwd: Path) -> PlanStep:
    return PlanStep("local.Popen", {"argv": argv, "env": env, "cwd": str(cwd)})
