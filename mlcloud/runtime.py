"""Inside a job: the same environment on every backend.

Every provider's launcher sets these variables before running the user's command, so a train.py
written against this module runs unchanged on the laptop, SageMaker, Vertex AI or Azure ML:

=========================  ==========================================================
``MLCLOUD_JOB_ID``         the mlcloud job id
``MLCLOUD_PROVIDER_TYPE``  local, sagemaker, vertex, azureml, ...
``MLCLOUD_MODEL_DIR``      write the trained model here (``save_model`` does)
``MLCLOUD_OUTPUT_DIR``     other outputs (metrics, plots) go here
``MLCLOUD_CHECKPOINT_DIR`` checkpoints; survives restarts/spot interruptions (if set)
``MLCLOUD_INPUT_<NAME>``   a local directory or file for each of the job's inputs
``MLCLOUD_HPARAMS``        the hyperparameters as a JSON object
``MLCLOUD_NUM_NODES``      nodes in the job (1 unless distributed)
``MLCLOUD_NODE_RANK``      this node's rank, 0 on the chief
=========================  ==========================================================

plus ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from torchrun
when the job is distributed.

This module is standard-library only (torch and model libraries are imported on use): cloud
launchers ship it inside the job's code archive, with ``modeldir.py`` and ``errors.py``, so it
works in images without mlcloud installed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import ConfigError

if TYPE_CHECKING:
    import datetime

    from torch._C._distributed_c10d import TCPStore

ENV_JOB_ID = "MLCLOUD_JOB_ID"
ENV_PROVIDER_TYPE = "MLCLOUD_PROVIDER_TYPE"
ENV_MODEL_DIR = "MLCLOUD_MODEL_DIR"
ENV_OUTPUT_DIR = "MLCLOUD_OUTPUT_DIR"
ENV_CHECKPOINT_DIR = "MLCLOUD_CHECKPOINT_DIR"
ENV_INPUT_PREFIX = "MLCLOUD_INPUT_"
ENV_HPARAMS = "MLCLOUD_HPARAMS"
ENV_NUM_NODES = "MLCLOUD_NUM_NODES"
ENV_NODE_RANK = "MLCLOUD_NODE_RANK"

_CKPT = re.compile(r"^ckpt-(\d{8})\.pt$")


def input_env_name(name: str) -> str:
    return ENV_INPUT_PREFIX + name.upper()


def job_id() -> str | None:
    return os.environ.get(ENV_JOB_ID)


def _dir(var: str, default: str) -> Path:
    path = Path(os.environ.get(var) or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir() -> Path:
    """Where to write the trained model (created if missing; ``./model`` outside mlcloud)."""
    return _dir(ENV_MODEL_DIR, "model")


def output_dir() -> Path:
    return _dir(ENV_OUTPUT_DIR, "output")


def checkpoint_dir() -> Path | None:
    """The checkpoint directory, or None when the job has no ``checkpoint`` configured."""
    value = os.environ.get(ENV_CHECKPOINT_DIR)
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def input_dir(name: str) -> Path:
    """The local path of input ``name`` (``inputs: {train: ...}`` → ``input_dir("train")``)."""
    value = os.environ.get(input_env_name(name))
    if not value:
        known = sorted(
            k[len(ENV_INPUT_PREFIX) :].lower()  # no str.removeprefix: runs on 3.8
            for k in os.environ
            if k.startswith(ENV_INPUT_PREFIX)
        )
        raise KeyError(f"no input named {name!r}; this job has: {', '.join(known) or 'none'}")
    return Path(value)


def hparams() -> dict[str, Any]:
    """The job's hyperparameters (``MLCLOUD_HPARAMS``), or ``{}``."""
    raw = os.environ.get(ENV_HPARAMS)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{ENV_HPARAMS} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{ENV_HPARAMS} must hold a JSON object")
    return value


def num_nodes() -> int:
    return int(os.environ.get(ENV_NUM_NODES, "1"))


def node_rank() -> int:
    return int(os.environ.get(ENV_NODE_RANK, "0"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on the first run)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def is_chief() -> bool:
    return rank() == 0


# ---- distributed ----------------------------------------------------------------------------
def init_distributed(backend: str | None = None, timeout_s: float = 120.0) -> tuple[int, int]:
    """Initialise torch.distributed for this worker and return ``(rank, world_size)``.

    After a worker is killed and torchrun restarts the group, keys the dead generation left in
    a store that outlives it make gloo connect to peers that no longer exist (measured: hangs in
    6 of 11 restarts). So either the store is fresh for each rendezvous round (mlcloud's local
    provider sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: rank 0 creates it here, bound to
    MASTER_ADDR only) or, with one agent sharing its store, keys are namespaced by the restart
    count.
    """
    import datetime

    import torch
    import torch.distributed as dist

    # torch.distributed re-exports these without declaring it; import them from their home.
    from torch._C._distributed_c10d import PrefixStore, Store, TCPStore

    size = world_size()
    if size <= 1 or dist.is_initialized():
        return rank(), size
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    base: Store
    if not agent_store and rank() == 0:
        base = _store_server(addr, port, size, timeout)
    else:
        base = TCPStore(addr, port, size, is_master=False, timeout=timeout)
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    store: Store
    if agent_store and nodes == 1:
        # One agent: its restart count is every worker's generation.
        store = PrefixStore(f"mlcloud/gen{restart_count()}", base)
    else:
        # Agents on several nodes count restarts differently (a healthy node's agent restarts
        # for a membership change without counting it), so the count is no shared generation.
        # Without a shared agent store each round already has a fresh store on a new port.
        store = base
    dist.init_process_group(backend, store=store, rank=rank(), world_size=size, timeout=timeout)
    return rank(), size


def _store_server(addr: str, port: int, size: int, timeout: datetime.timedelta) -> TCPStore:
    """Rank 0's TCPStore, listening on MASTER_ADDR only (torch's own binds every interface).

    TCPStore has no bind address, but adopts a listening socket (``master_listen_fd``) when
    libuv is off. If MASTER_ADDR is not an address of this host, fall back to torch's default.
    """
    import socket

    from torch._C._distributed_c10d import TCPStore

    try:
        sock = socket.create_server((addr, port), reuse_port=False)
    except OSError:
        return TCPStore(addr, port, size, is_master=True, timeout=timeout)
    # detach(): the store's daemon owns the fd from now on; if Python closed it at exit while
    # the daemon still polls it, the daemon aborts the process (exit -6 → a torchrun restart).
    return TCPStore(
        addr,
        port,
        size,
        is_master=True,
        timeout=timeout,
        wait_for_workers=False,
        master_listen_fd=sock.detach(),
        use_libuv=False,
    )


# ---- checkpoints ----------------------------------------------------------------------------
def latest_checkpoint() -> Path | None:
    """The newest ``ckpt-XXXXXXXX.pt`` in the checkpoint dir, or None."""
    folder = checkpoint_dir()
    if folder is None:
        return None
    found = sorted(p for p in folder.iterdir() if _CKPT.match(p.name))
    return found[-1] if found else None


def save_checkpoint(state: dict[str, Any], step: int, keep: int = 2) -> Path | None:
    """Atomically write ``state`` as checkpoint ``step`` (chief only) and keep the newest ``keep``.

    Written to a temporary name and renamed, so a kill mid-write never leaves a torn checkpoint.
    Returns the path on the chief, None elsewhere or when the job has no checkpoint dir.
    """
    import torch

    folder = checkpoint_dir()
    if folder is None or not is_chief():
        return None
    final = folder / f"ckpt-{step:08d}.pt"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, final)
    for old in sorted(p for p in folder.iterdir() if _CKPT.match(p.name))[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(map_location: str = "cpu") -> tuple[dict[str, Any], int] | None:
    """The newest checkpoint as ``(state, step)``, or None. Loaded with ``weights_only=True``."""
    import torch

    path = latest_checkpoint()
    if path is None:
        return None
    match = _CKPT.match(path.name)
    assert match is not None
    state = torch.load(path, map_location=map_location, weights_only=True)
    return state, int(match.group(1))


# ---- SIGTERM: a last checkpoint before the job is stopped ------------------------------------
_stop = threading.Event()
_callbacks: list[Callable[[], None]] = []
_installed = False


def _on_sigterm(signum: int, frame: object) -> None:
    _stop.set()
    for callback in list(_callbacks):
        callback()
    if _callbacks:
        sys.exit(128 + signum)


def on_sigterm(callback: Callable[[], None] | None = None) -> None:
    """Handle SIGTERM (cancel, spot interruption, scale-down).

    With a ``callback`` (e.g. one that saves a checkpoint) it runs and the process exits 143.
    Without one, SIGTERM only sets :func:`stop_requested`, for loops that stop at a step boundary.
    Call from the main thread.
    """
    global _installed
    if callback is not None:
        _callbacks.append(callback)
    if not _installed:
        signal.signal(signal.SIGTERM, _on_sigterm)
        _installed = True


def stop_requested() -> bool:
    """True once SIGTERM arrived (after :func:`on_sigterm` was called)."""
    return _stop.is_set()


# ---- models ---------------------------------------------------------------------------------
def save_model(
    obj: Any,
    framework: str,
    path: str | Path | None = None,
    **options: Any,
) -> Path:
    """Write ``obj`` as an mlcloud model directory (``mlcloud-model.yaml`` + artifacts).

    ``framework`` is ``sklearn``, ``pytorch``, ``onnx`` or ``custom``; see
    :func:`mlcloud.modeldir.save` for the per-framework options.
    """
    from mlcloud import modeldir

    target = Path(path) if path is not None else model_dir()
    return modeldir.save(obj, framework, target, created_by=job_id(), **options)
