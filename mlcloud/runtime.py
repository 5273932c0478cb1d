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
``MLFLOW_TRACKING_URI``    (optional) :func:`log_metrics` / :func:`log_params` mirror to MLflow
=========================  ==========================================================

plus ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` from torchrun
when the job is distributed.

This module is standard-library only (torch and model libraries are imported on use): cloud
launchers ship it inside the job's code archive, with ``modeldir.py`` and ``errors.py``, so it
works in images without mlcloud installed.
"""

from __future__ import annotations

import atexit
import json
import math
import numbers
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import ConfigError, SpecError

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
    *,
    reference: Any = None,
    reference_target: Any = None,
    feature_names: list[str] | None = None,
    **options: Any,
) -> Path:
    """Write ``obj`` as an mlcloud model directory (``mlcloud-model.yaml`` + artifacts).

    ``framework`` is ``sklearn``, ``pytorch``, ``onnx`` or ``custom``; see
    :func:`mlcloud.modeldir.save` for the per-framework options. ``reference``: the training
    features (rows, a DataFrame or {name: column}; optional ``reference_target``), stored as
    the drift baseline (:mod:`mlcloud.modelprofile`) that ``mlcloud monitor`` compares with.
    """
    from mlcloud import modeldir

    target = Path(path) if path is not None else model_dir()
    if reference is not None:
        from mlcloud import modelprofile

        modelprofile.write(target, reference, target=reference_target, model=obj,
                           feature_names=feature_names)  # fmt: skip
    return modeldir.save(obj, framework, target, created_by=job_id(), **options)


# ---- metrics and params ---------------------------------------------------------------------
METRICS_FILE = "metrics.json"  # in output_dir(); mlcloud collects it into the job record
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"
FLUSH_SECONDS = 1.0  # log_metrics rewrites metrics.json at most this often (and at exit)
_NAME_MAX = 250  # MLflow's limit for metric and param names
_track_lock = threading.RLock()
_track: dict[str, Any] = {}  # "data", "dirty", "next" (write time), "mlflow" (_Mirror | None)


def log_params(params: Mapping[str, Any]) -> None:
    """Record the job's parameters (JSON scalars: str, number, bool, None) in ``metrics.json``.

    Only the chief writes (rank 0; node 0 when the job runs without torchrun): on other ranks
    this is a no-op, so every rank can call it. A name logged again takes the new value.
    """
    clean = {_name(k, "param"): _scalar(k, v) for k, v in dict(params).items()}
    if not _is_tracking_rank():
        return
    with _track_lock:
        _data()["params"].update(clean)
        _track["dirty"] = True
        _flush(force=True)
        _to_mlflow(params=clean)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Append a point (finite number, optional ``step``, wall time) to each named metric.

    ``metrics.json`` is ``{"params": {...}, "metrics": {name: [{"value", "step", "time"}]}}``,
    replaced atomically at most every FLUSH_SECONDS and at exit (:func:`flush_metrics` forces
    it). Only the chief writes; other ranks return at once (reduce across ranks first if a
    metric should cover them all).
    """
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise SpecError(f"log_metrics: step must be a non-negative integer, got {step!r}")
    clean = {_name(k, "metric"): _number(k, v) for k, v in dict(metrics).items()}
    if not _is_tracking_rank():
        return
    now = time.time()
    with _track_lock:
        series = _data()["metrics"]
        points: list[tuple[str, float, int]] = []
        for key, value in clean.items():
            history = series.setdefault(key, [])
            history.append({"value": value, "step": step, "time": round(now, 3)})
            points.append((key, value, len(history) - 1 if step is None else step))
        _track["dirty"] = True
        _flush(force=False)
        _to_mlflow(metrics=points, when=now)


def flush_metrics() -> Path | None:
    """Write ``metrics.json`` now if anything is pending; its path (None off the chief)."""
    with _track_lock:
        return _flush(force=True) if _is_tracking_rank() and _data() is not None else None


def _is_tracking_rank() -> bool:
    return rank() == 0 if "RANK" in os.environ else node_rank() == 0


def _name(key: object, kind: str) -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > _NAME_MAX:
        raise SpecError(f"{kind} name {key!r}: not a string of 1 to {_NAME_MAX} characters")
    return key


def _number(key: str, value: object) -> float:
    try:  # float() takes ints, floats, numpy scalars and 0-d tensors alike
        number = float(value) if not isinstance(value, (bool, str, bytes)) else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise SpecError(
            f"metric {key!r}: {value!r} is not a finite number",
            hint="skip the point (a diverged loss is better logged as a flag metric)",
        )
    return number


def _scalar(key: str, value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, numbers.Real) and math.isfinite(float(value)):
        return float(value)
    raise SpecError(
        f"param {key!r}: {value!r} is not a JSON scalar (string, finite number, bool or null)",
        hint="log nested settings as separate params, e.g. {'optim.lr': 0.1}",
    )


def _data() -> dict[str, Any]:
    """What is logged so far; on first use, what an earlier attempt of this job left."""
    if "data" not in _track:
        data: dict[str, Any] = {"params": {}, "metrics": {}}
        path = output_dir() / METRICS_FILE
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(old.get("params"), dict) and isinstance(old.get("metrics"), dict):
                data = {"params": old["params"], "metrics": old["metrics"]}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError) as e:
            _warn("unreadable", f"{path} is unreadable ({e}); starting it afresh")
        _track.update(data=data, dirty=False, next=0.0)
        atexit.register(flush_metrics)
    return _track["data"]  # type: ignore[no-any-return]


def _flush(force: bool) -> Path:
    """Replace metrics.json atomically (temp file + rename: readers never see half of it)."""
    path, start = output_dir() / METRICS_FILE, time.monotonic()
    if (_track["dirty"] or not path.exists()) and (force or start >= _track["next"]):
        tmp = path.with_name(f".{METRICS_FILE}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(_track["data"], separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
        # a long series takes long to write: rewriting it costs at most ~10% of the job's time
        took = time.monotonic() - start
        _track.update(dirty=False, next=start + took + max(FLUSH_SECONDS, 10 * took))
    return path


_warned: set[str] = set()


def _warn(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        print(f"mlcloud: warning: {message}", file=sys.stderr, flush=True)


def _to_mlflow(**logged: Any) -> None:
    """Mirror to the job's MLflow run when MLFLOW_TRACKING_URI is set (started on first use)."""
    if "mlflow" not in _track:
        _track["mlflow"] = _Mirror.start() if os.environ.get(ENV_MLFLOW_URI) else None
    if _track["mlflow"] is not None:
        _track["mlflow"].log(**logged)


class _Mirror:
    """One MLflow run per mlcloud job (tagged ``mlcloud.job_id``, named by the job id): a
    restarted attempt logs to the same run. Inside an Azure ML job, the run Azure ML made
    (``MLFLOW_RUN_ID``) is used. A failing tracking server costs one warning, never the job;
    the URI is never printed (it may carry credentials)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def start(cls) -> _Mirror | None:
        try:
            import mlflow
        except ImportError:
            why = "mlflow is not installed in the job's environment (pip install mlflow-skinny)"
            _warn("mlflow", f"{ENV_MLFLOW_URI} is set but {why}; metrics.json only")
            return None
        try:
            client = mlflow.MlflowClient()
            run_id = os.environ.get("MLFLOW_RUN_ID") or _mlflow_run(client, job_id())
            client.update_run(run_id, status="RUNNING")
        except Exception as e:
            _warn("mlflow", f"MLflow run not started ({_redacted(e)}); metrics.json only")
            return None
        mirror = cls(client, run_id)
        atexit.register(mirror.finish)
        return mirror

    def log(
        self,
        metrics: list[tuple[str, float, int]] | None = None,
        params: Mapping[str, Any] | None = None,
        when: float = 0.0,
    ) -> None:
        from mlflow.entities import Metric, Param

        try:
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, v, int(when * 1000), s) for k, v, s in metrics or []],
                params=[Param(k, str(v)) for k, v in (params or {}).items()],
            )
        except Exception as e:  # a changed param value, a server gone: the job goes on
            _warn("mlflow-log", f"MLflow did not take a logged value ({_redacted(e)})")

    def finish(self) -> None:
        failed = getattr(sys, "last_type", None) is not None  # an uncaught exception ended it
        status = "KILLED" if _stop.is_set() else "FAILED" if failed else "FINISHED"
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            _warn("mlflow-end", f"MLflow run not closed ({_redacted(e)})")


def _mlflow_run(client: Any, job: str | None) -> str:
    """The run tagged with this job's id in MLflow's experiment (MLFLOW_EXPERIMENT_ID or _NAME,
    else the default one), created if absent."""
    experiment = os.environ.get("MLFLOW_EXPERIMENT_ID")
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not experiment and name:
        found = client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else client.create_experiment(name)
    experiment = experiment or "0"
    wanted = f"tags.`mlcloud.job_id` = '{(job or '').replace(chr(39), '')}'"
    runs = client.search_runs([experiment], filter_string=wanted, max_results=1) if job else []
    if runs:
        return str(runs[0].info.run_id)
    tags = {"mlcloud.job_id": job or "", "mlcloud.provider": os.environ.get(ENV_PROVIDER_TYPE, "")}
    return str(client.create_run(experiment, run_name=job, tags=tags).info.run_id)


def _redacted(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    uri = os.environ.get(ENV_MLFLOW_URI) or ""
    return text.replace(uri, f"${ENV_MLFLOW_URI}") if uri else text
