"""The one BentoML service that serves any mlcloud model directory.

Run it with::

    MLCLOUD_SERVE_MODEL=/path/to/model bentoml serve serving.service:MlcloudService \\
        --host 127.0.0.1 --port 3000

Environment: ``MLCLOUD_SERVE_MODEL`` (the model dir; the cloud contracts also read their own
variables), ``MLCLOUD_SERVE_WORKERS`` (default 1), ``MLCLOUD_SERVE_MAX_BODY`` (bytes, default
10 MiB), ``MLCLOUD_SERVING_CONTRACT`` (local|sagemaker|vertex|azureml; detected when unset),
``MLCLOUD_SERVE_ACCESS_LOG`` (1 to log every request; off by default, it costs throughput).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import tempfile
import time
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import AfterValidator

from mlcloud import modeldir
from mlcloud.errors import ConfigError
from serving import bentoml_fixes
from serving.app import State, build_app
from serving.batching import MicroBatcher
from serving.contracts import ENV_MODEL, ContractError, locate_model_dir, resolve
from serving.guard import GuardMiddleware, metrics
from serving.inputs import InputError
from serving.loaders import load_model

logger = logging.getLogger("mlcloud.serving")


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name}={raw!r} must be a whole number") from None
    if value < 1:
        raise ConfigError(f"{name}={raw!r} must be at least 1")
    return value


def _private_metrics_dir() -> None:
    """Give this server its own Prometheus multiprocess directory.

    BentoML puts it at $BENTOML_HOME/prometheus_multiproc_dir and wipes it at start-up, so two
    servers sharing a BENTOML_HOME (two endpoints, or old and new during an update) would mix
    and delete each other's metrics. Runs in the ``bentoml serve`` process only: its workers
    inherit the directory through PROMETHEUS_MULTIPROC_DIR.
    """
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return
    from bentoml._internal.configuration.containers import BentoMLContainer

    path = tempfile.mkdtemp(prefix="mlcloud-metrics-")
    BentoMLContainer.prometheus_multiproc_dir.set(path)
    atexit.register(shutil.rmtree, path, ignore_errors=True)


_private_metrics_dir()
bentoml_fixes.apply()  # BentoML's request timeout kept every request alive for 60 s
CONTRACT = resolve()
WORKERS = _int_env("MLCLOUD_SERVE_WORKERS", 1)
MAX_BODY = _int_env("MLCLOUD_SERVE_MAX_BODY", 10 * 1024 * 1024)
# Models faster than this run on the event loop: a thread hop would cost more than it frees.
INLINE_BELOW_S = 0.002
STATE = State(max_body=MAX_BODY, workers=WORKERS)
NATIVE_ROUTE = "/v1/predict"
KNOWN_ROUTES = (
    *CONTRACT.routes,
    *CONTRACT.extra.values(),
    "/predict",
    NATIVE_ROUTE,
    "/",
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/docs",
    "/docs.json",
    "/openapi.json",
    "/schema.json",
)


def _check_rows(instances: list[Any]) -> list[Any]:
    # Per request, before BentoML stacks requests into one batch: one bad request must not
    # fail the others in its batch, and the client gets a 400 naming the problem, not a 500.
    if STATE.predictor is None:
        raise ValueError("model is not loaded yet")
    try:
        STATE.predictor.prepare(instances)
    except InputError as e:
        raise ValueError(str(e)) from None
    return instances


Rows = Annotated[list[Any], AfterValidator(_check_rows)]


@bentoml.service(
    name="mlcloud",
    workers=WORKERS,
    # BentoML's HTTP metrics label raw paths (unbounded series); GuardMiddleware records ours.
    metrics={"enabled": False},
    logging={"access": {"enabled": os.environ.get("MLCLOUD_SERVE_ACCESS_LOG") == "1"}},
    traffic={"timeout": 60},
)
@bentoml.asgi_app(build_app(CONTRACT, STATE), path="/")
class MlcloudService:
    """Loads the model once per worker; the mounted app and the native API share it."""

    def __init__(self) -> None:
        if CONTRACT.model_dir is None:
            raise ContractError(f"no model to serve: set {ENV_MODEL} to an mlcloud model dir")
        root = locate_model_dir(CONTRACT.model_dir)
        started = time.perf_counter()
        predictor = load_model(root)
        STATE.info = {
            "framework": predictor.framework,
            "model_sha256": modeldir.digest(root),
            "contract": CONTRACT.name,
        }
        if predictor.batchable:
            STATE.batcher = MicroBatcher(
                predictor.run, inline=_is_fast(predictor), on_batch=_observe_batch
            )
        STATE.predictor = predictor
        # Everything allocated so far lives as long as the process: take it out of the GC's
        # generations so full collections stop scanning it (removed the p99 stalls).
        if os.environ.get("MLCLOUD_SERVE_GC_FREEZE", "1") != "0":  # 0: for A/B benchmarks
            gc.collect()
            gc.freeze()
        logger.info(
            "loaded %s model from %s in %.2fs (contract %s)",
            predictor.framework,
            root,
            time.perf_counter() - started,
            CONTRACT.name,
        )

    def __is_ready__(self) -> bool:
        return STATE.ready

    @bentoml.api(  # type: ignore[untyped-decorator]
        route=NATIVE_ROUTE, batchable=True, max_batch_size=512, max_latency_ms=1000
    )
    def predict_native(self, instances: Rows) -> list[Any]:
        """BentoML-native input: ``{"instances": [...]}``; BentoML batches these itself."""
        assert STATE.predictor is not None
        return STATE.predictor.predict(instances)


def _observe_batch(size: int) -> None:
    metrics().batch.observe(size)


def _is_fast(predictor: Any) -> bool:
    """Time one call on the manifest's example (if any) to pick inline vs. thread."""
    example = predictor.manifest.get("example")
    shape = predictor.input_spec.shape
    try:
        if example:
            batch = predictor.prepare(example)
        elif shape and all(d > 0 for d in shape[1:]):
            batch = np.zeros((1, *shape[1:]), dtype=predictor.input_spec.dtype or "float64")
        else:
            return False
        predictor.run(batch)  # warm-up
        started = time.perf_counter()
        predictor.run(batch)
        return time.perf_counter() - started < INLINE_BELOW_S
    except Exception:
        return False


MlcloudService.add_asgi_middleware(  # type: ignore[attr-defined]
    GuardMiddleware, max_body=MAX_BODY, routes=KNOWN_ROUTES
)
