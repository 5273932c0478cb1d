"""The one BentoML service that serves any mlcloud model directory.

Run it with::

    MLCLOUD_SERVE_MODEL=/path/to/model bentoml serve serving.service:MlcloudService \\
        --host 127.0.0.1 --port 3000

Environment: ``MLCLOUD_SERVE_MODEL`` (the model dir; the cloud contracts also read their own
variables), ``MLCLOUD_SERVE_WORKERS`` (default 1), ``MLCLOUD_SERVE_MAX_BODY`` (bytes, default
10 MiB), ``MLCLOUD_SERVING_CONTRACT`` (local|sagemaker|vertex|azureml; detected when unset),
``MLCLOUD_SERVE_ACCESS_LOG`` (1 to log every request; off by default, it costs throughput),
``MLCLOUD_SERVE_VERSION`` (the model version id in /metrics and captured records; default: the
model's sha256, 12 digits), ``MLCLOUD_CAPTURE_*`` (request capture: serving/capture.py).
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import tempfile
import time

import bentoml

from mlcloud import modeldir
from mlcloud.errors import ConfigError
from serving import bentoml_fixes, capture
from serving.app import State, build_app, media_routes
from serving.batching import MicroBatcher, is_fast
from serving.contracts import ENV_MODEL, ContractError, locate_model_dir, resolve
from serving.guard import GuardMiddleware, metrics
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
ENV_VERSION = "MLCLOUD_SERVE_VERSION"
WORKERS = _int_env("MLCLOUD_SERVE_WORKERS", 1)
MAX_BODY = _int_env("MLCLOUD_SERVE_MAX_BODY", 10 * 1024 * 1024)
STATE = State(max_body=MAX_BODY, workers=WORKERS)
# BentoML's own API routes (``@bentoml.api``) are deliberately absent: every prediction goes
# through the one JSON route of the contract (``/predict`` locally), with one validator, one
# batcher and one error format. A native ``/v1/predict`` once ran beside it and differed: it
# answered a bare list, accepted unknown fields, shed a large valid body with 503 and logged a
# ~2 KB traceback for every bad request (2 MB per 1,000). Now it is a 404 like any unknown path.
KNOWN_ROUTES = (
    *CONTRACT.routes,
    *CONTRACT.extra.values(),
    "/predict",
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
    """Loads the model once per worker for the mounted app (it has no BentoML API)."""

    def __init__(self) -> None:
        if CONTRACT.model_dir is None:
            if CONTRACT.model_uri is not None:  # the entrypoint downloads it first
                raise ContractError(
                    f"{CONTRACT.model_uri} is not a local path: start the server with "
                    "`python -m serving.entrypoint`, which downloads it"
                )
            raise ContractError(f"no model to serve: set {ENV_MODEL} to an mlcloud model dir")
        root = locate_model_dir(CONTRACT.model_dir)
        started = time.perf_counter()
        predictor = load_model(root)
        STATE.info = {
            "framework": predictor.framework,
            "model_sha256": modeldir.digest(root),
            "contract": CONTRACT.name,
            "version_warnings": predictor.version_warnings,
        }
        STATE.version = os.environ.get(ENV_VERSION) or str(STATE.info["model_sha256"])[:12]
        STATE.capture = capture.from_env(os.environ, STATE.version)
        if STATE.capture is not None:
            atexit.register(STATE.capture.close)
        if predictor.batchable:
            STATE.batcher = MicroBatcher(
                predictor.run, inline=is_fast(predictor), on_batch=_observe_batch
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


def _observe_batch(size: int) -> None:
    metrics().batch.observe(size)


MlcloudService.add_asgi_middleware(  # type: ignore[attr-defined]
    GuardMiddleware,
    max_body=MAX_BODY,
    routes=KNOWN_ROUTES,
    media=media_routes(CONTRACT),
    predict=(*CONTRACT.predict_routes, "/predict"),
    version=lambda: STATE.version,
)
