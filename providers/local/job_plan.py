"""``plan_job`` of local jobs: the exact argv/env/cwd of every process, nothing started.

A plain job is one process. A distributed one is one ``torchrun --no-python`` agent per node
started on this machine, with a c10d rendezvous whose TCPStore the supervisor hosts on 127.0.0.1
(see ``rdzv_store.py``), or the profile's ``rdzv_endpoint`` for a multi-machine run. Each step's
``env`` is everything set on top of the environment the job inherits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud import runtime, sensitive
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import Plan, PlanStep, new_job_id

if TYPE_CHECKING:
    from mlcloud.specs import TrainingJob
    from providers.local.provider import LocalProvider

RDZV_CONF = "join_timeout=60,last_call_timeout=1,close_timeout=10"
#: seconds between two attempts of a plain job: the first wait, doubled per attempt up to the cap
RESTART_BACKOFF = (1.0, 60.0)
#: Linux's MAX_ARG_STRLEN: the longest one argv or environment string ("NAME=value" and NUL)
MAX_ARG_STRLEN = 32 * 4096
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
    # literal secret-looking env values: for the supervisor's environment, never its files
    hidden_env: dict[str, str] = field(default_factory=dict)
    backoff: tuple[float, float] = RESTART_BACKOFF


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
        ENV_STATE_DB: provider.store.locator,
    }
    _, env_from, hidden = _split_env(job, provider.where)
    nodes_here = conf.nodes_here or (1 if conf.rdzv_endpoint else job.max_nodes)
    _check_gpus(job, nodes_here, provider.where)
    rdzv: Rendezvous | None = None
    if not job.distributed:
        steps = [_popen(list(job.command), {**env, **_visible_gpus(job, 0)}, source, env_from)]
    else:
        # Loopback rendezvous hosted by the supervisor, unless the profile names a head node.
        rdzv = None if conf.rdzv_endpoint else _loopback_rendezvous()
        argv = _torchrun_argv(job, job_id, conf.python, rdzv, conf.rdzv_endpoint)
        hosted = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if rdzv else {}
        steps = [
            _popen(argv, {**env, **hosted, **_visible_gpus(job, node)}, source, env_from)
            for node in range(nodes_here)
        ]
    context = LocalJobContext(
        job_dir=str(home),
        rdzv=rdzv,
        restarts=0 if job.distributed else job.max_restarts,
        grace=conf.cancel_grace,
        python=conf.python,
        hidden_env=hidden,
    )
    _check_exec_limits(steps, provider.where)
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
        **_split_env(job, where)[0],
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
            f"accelerators={job.resources.accelerators!r} (needs {need} GPU(s), this machine "
            f"has {have})",
            where,
            hint="drop resources.accelerators "
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


def _check_exec_limits(steps: list[PlanStep], where: str) -> None:
    """Refuse now what ``execve`` would refuse at run time (``Argument list too long``): one
    string over MAX_ARG_STRLEN (Linux), or argv and environment together over ARG_MAX."""
    inherited = sum(_exec_size(f"{k}={v}") for k, v in os.environ.items())
    total_limit = os.sysconf("SC_ARG_MAX") if "SC_ARG_MAX" in os.sysconf_names else 2**20
    for step in steps:
        strings = [("command", a) for a in step.request["argv"]]
        strings += [(k, f"{k}={v}") for k, v in step.request["env"].items()]
        for what, text in strings:
            size = _exec_size(text)
            if size > MAX_ARG_STRLEN and sys.platform.startswith("linux"):
                raise _too_long(what, size, f"one {_kind(what)} holds at most 128 KiB")
        total = inherited + sum(_exec_size(text) for _, text in strings)
        if total > total_limit:
            raise _too_long(
                "command and env", total, f"together they hold {total_limit // 1024} KiB"
            )


def _exec_size(text: str) -> int:
    return len(text.encode(errors="surrogateescape")) + 1 + 8  # its NUL and its pointer


def _kind(what: str) -> str:
    return "argument" if what == "command" else "environment variable"


def _too_long(what: str, size: int, limit: str) -> SpecError:
    field = {runtime.ENV_HPARAMS: "hyperparameters"}.get(what, f"env.{what}")
    field = what if what in ("command", "command and env") else field
    return SpecError(
        f"{field}: {size / 1024:.0f} KiB is more than a process can be started with here ({limit})",
        hint="keep large values in a file and pass it as an input (inputs: {params: "
        "./params.json}); the job reads it at MLCLOUD_INPUT_PARAMS",
    )


def _popen(argv: list[str], env: dict[str, str], cwd: Path, env_from: dict[str, str]) -> PlanStep:
    """``env_from``: variables the supervisor copies from its own environment (secrets)."""
    request = {"argv": argv, "env": env, "cwd": str(cwd)}
    return PlanStep("local.Popen", {**request, "env_from": env_from} if env_from else request)


def _split_env(
    job: TrainingJob, where: str
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The job's env as (values, copied from the supervisor's environment, hidden values):
    ``{from_env: NAME}`` and literal secret-looking values never reach a file."""
    try:
        return sensitive.split_env(job.env_json)
    except ValueError as exc:
        raise UnsupportedFeature(
            f"cloud secret store references ({exc})",
            where,
            hint="a local job reads secrets from your environment: {from_env: NAME}",
        ) from None
