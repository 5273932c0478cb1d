"""Local training jobs: planned as exact argv/env/cwd, run detached under a supervisor.

``submit_job`` writes the plan into ``$MLCLOUD_HOME/jobs/<id>/`` and starts
``providers.local.supervisor`` in its own session, so the job (and its final status) outlives the
CLI. Distributed jobs run under ``torchrun --no-python`` with a c10d rendezvous whose TCPStore the
supervisor hosts on 127.0.0.1 (see ``rdzv_store.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import runtime
from mlcloud.config import profile_settings
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.provider import JobRecord, JobState, Plan, PlanStep, new_job_id
from providers.local import procs, supervisor
from providers.local.settings import LocalSettings

if TYPE_CHECKING:
    from mlcloud.specs import TrainingJob
    from providers.local.provider import LocalProvider

RDZV_CONF = "join_timeout=60,last_call_timeout=1,close_timeout=10"
_LOCAL_SCHEMES = ("file://",)


def settings(provider: LocalProvider) -> LocalSettings:
    return profile_settings(LocalSettings, provider.profile)


def job_dir(provider: LocalProvider, job_id: str) -> Path:
    return provider.store.home / "jobs" / job_id


def _local_path(value: str, what: str, provider: LocalProvider) -> str:
    if "://" in value and not value.startswith(_LOCAL_SCHEMES):
        scheme = value.split("://", 1)[0]
        raise UnsupportedFeature(
            f"{what} {scheme}:// URIs",
            provider.where,
            hint="use a local path or file:// URI, or run on the cloud that holds the data",
        )
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


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


def plan_job(provider: LocalProvider, job: TrainingJob) -> Plan:
    conf = settings(provider)
    job_id = new_job_id(job.name)
    home = job_dir(provider, job_id)
    source = Path(_local_path(job.source, "source", provider))
    if not source.is_dir():
        raise SpecError(f"source: {source} is not a directory", hint="set source: to your code dir")
    env: dict[str, str] = {
        "PYTHONUNBUFFERED": "1",
        **job.env,
        runtime.ENV_JOB_ID: job_id,
        runtime.ENV_PROVIDER_TYPE: provider.type,
        runtime.ENV_MODEL_DIR: str(home / "model"),
        runtime.ENV_OUTPUT_DIR: _local_path(job.output, "output", provider)
        if job.output
        else str(home / "output"),
        runtime.ENV_HPARAMS: json.dumps(job.hyperparameters, sort_keys=True),
        runtime.ENV_NUM_NODES: str(job.min_nodes),
        runtime.ENV_NODE_RANK: "0",
    }
    if job.checkpoint:
        env[runtime.ENV_CHECKPOINT_DIR] = (
            str(home / "checkpoints")
            if job.checkpoint == "auto"
            else _local_path(job.checkpoint, "checkpoint", provider)
        )
    for name, value in sorted(job.inputs.items()):
        path = _local_path(value, f"input {name!r}", provider)
        if not Path(path).exists():
            raise SpecError(f"inputs.{name}: {path} does not exist")
        env[runtime.input_env_name(name)] = path
    gpus = job.resources.accelerator_count
    nodes_here = conf.nodes_here or (1 if conf.rdzv_endpoint else job.max_nodes)
    if gpus:
        have = gpu_count()
        need = gpus * nodes_here
        if have < need:
            raise UnsupportedFeature(
                f"accelerators={job.resources.accelerators!r} ({need} GPU(s) on this machine)",
                f"local (profile {provider.name!r})",
                hint=f"this machine has {have} GPU(s): drop resources.accelerators "
                "(--set resources.accelerators=null) or run on a GPU provider",
            )
    python = conf.python or sys.executable
    ports: list[int] = []
    steps: list[PlanStep] = []
    rdzv: dict[str, Any] | None = None
    if not job.distributed:
        node_env = dict(env)
        if gpus:
            node_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
        steps.append(_popen(list(job.command), node_env, source))
    else:
        if conf.rdzv_endpoint:
            endpoint, host_store = conf.rdzv_endpoint, False
        else:
            from providers.local.endpoint_net import free_port  # distributed jobs only

            port = free_port()
            ports.append(port)
            endpoint, host_store = f"127.0.0.1:{port}", True
            rdzv = {"host": "127.0.0.1", "port": port}
        for node in range(nodes_here):
            node_env = dict(env)
            if gpus:
                node_env["CUDA_VISIBLE_DEVICES"] = ",".join(
                    str(i) for i in range(node * gpus, (node + 1) * gpus)
                )
            argv = [
                python, "-m", "torch.distributed.run",
                f"--nnodes={job.min_nodes}:{job.max_nodes}",
                f"--nproc-per-node={job.procs_per_node}",
                f"--max-restarts={job.max_restarts}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                f"--rdzv-id={job_id}",
                f"--rdzv-conf={RDZV_CONF}" + (",is_host=false" if host_store else ""),
                "--monitor-interval=0.5",
                "--no-python",
                python, "-m", "providers.local.worker",
                *job.command,
            ]  # fmt: skip
            if host_store:
                argv.insert(argv.index("--monitor-interval=0.5"), "--local-addr=127.0.0.1")
            steps.append(_popen(argv, node_env, source))
    return Plan(
        provider=provider.name,
        type=provider.type,
        kind="job",
        id=job_id,
        spec=job,
        steps=tuple(steps),
        context={
            "job_dir": str(home),
            "ports": tuple(ports),
            "rdzv": rdzv,
            # torchrun restarts the worker group itself; the supervisor restarts plain commands.
            "restarts": 0 if job.distributed else job.max_restarts,
            "grace": conf.cancel_grace,
        },
    )


def _popen(argv: list[str], env: dict[str, str], cwd: Path) -> PlanStep:
    return PlanStep("local.Popen", {"argv": argv, "env": env, "cwd": str(cwd)})


def submit_job(provider: LocalProvider, plan: Plan) -> JobRecord:
    home = Path(plan.context["job_dir"])
    (home / "logs").mkdir(parents=True, exist_ok=True)
    spec = {
        "job_id": plan.id,
        "state_db": str(provider.store.path),
        "steps": [dict(s.request) for s in plan.steps],
        "rdzv": plan.context["rdzv"],
        "restarts": plan.context["restarts"],
        "grace": plan.context["grace"],
        "max_runtime": plan.spec.max_runtime_seconds,  # type: ignore[union-attr]
        "log": str(home / "logs" / "job.log"),
    }
    (home / "supervisor.json").write_text(json.dumps(spec, indent=2))
    record = JobRecord(
        id=plan.id,
        name=plan.spec.name,
        provider=provider.name,
        type=provider.type,
        state=JobState.PENDING,
        native_id=plan.id,
        outputs={
            "model_dir": plan.steps[0].request["env"][runtime.ENV_MODEL_DIR],
            "output_dir": plan.steps[0].request["env"][runtime.ENV_OUTPUT_DIR],
            "logs": spec["log"],
        },
        spec=plan.spec.model_dump(mode="json"),
    )
    provider.store.add_job(record)
    pid = supervisor.spawn(
        home / "supervisor.json", home / "supervisor.log", settings(provider).python
    )
    return provider.store.update_job(
        plan.id, merge_details={"supervisor": procs.identity(pid), "job_dir": str(home)}
    )


def job_status(provider: LocalProvider, job_id: str) -> JobRecord:
    record = provider.store.get_job(job_id)
    if record.state.terminal:
        return record
    supervisor = record.details.get("supervisor")
    if supervisor and not procs.alive(supervisor):
        # Re-read: the supervisor may have recorded the end just before exiting.
        record = provider.store.get_job(job_id)
        if not record.state.terminal:
            procs.kill_job_processes(job_id, grace=0)
            record = provider.store.update_job(
                job_id,
                state=JobState.FAILED,
                message="the job's supervisor process died; see supervisor.log in the job dir",
            )
    return record


def job_logs(provider: LocalProvider, job_id: str, follow: bool) -> Iterator[str]:
    record = provider.store.get_job(job_id)
    path = Path(record.outputs.get("logs") or job_dir(provider, job_id) / "logs" / "job.log")
    deadline_wait = time.monotonic() + 10
    while not path.exists():
        if not follow or time.monotonic() > deadline_wait:
            return
        time.sleep(0.05)
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        pending = ""
        while True:
            chunk = fh.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending.rstrip("\n")
                    pending = ""
                continue
            if not follow or job_status(provider, job_id).state.terminal:
                rest = fh.read()
                yield from (pending + rest).splitlines()
                return
            time.sleep(0.1)


def cancel_job(provider: LocalProvider, job_id: str) -> JobRecord:
    record = job_status(provider, job_id)
    if record.state.terminal:
        return record
    grace = settings(provider).cancel_grace
    supervisor = record.details.get("supervisor")
    if supervisor and procs.alive(supervisor):
        os.kill(supervisor["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace + 10
        while time.monotonic() < deadline:
            record = provider.store.get_job(job_id)
            if record.state.terminal and not procs.alive(supervisor):
                return record
            time.sleep(0.05)
    # No supervisor (or it did not answer): end the processes ourselves.
    procs.kill_job_processes(job_id, grace=grace)
    return provider.store.update_job(job_id, state=JobState.CANCELLED, message="cancelled")
