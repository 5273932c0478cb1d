"""The Ray Serve application of one mlcloud endpoint: the BentoML service's routes in a replica.

Runs on the cluster (``import_path`` of the application ``endpoint_plan`` makes), never in the
mlcloud client. Each replica loads the model directory once with ``serving.loaders.load_model``
(manifest hashes, then the trust check against ``MLCLOUD_TRUSTED_MODEL`` from the
application's ``runtime_env``) and serves ``serving.app.build_app``'s routes behind
``serving.guard.GuardMiddleware``: the very code of the BentoML service, so ``/predict`` takes
and answers the same JSON, with the same validation and the same status codes (400/422 for bad
input, 413 over the body limit, 415 for a non-JSON body, 503 when overloaded), plus ``/readyz``,
``/livez`` and ``/healthz``. Serve's own metrics replace BentoML's ``/metrics``.

Shipped to the cluster as ``py_modules`` together with the ``mlcloud`` and ``serving`` packages
(``endpoint_plan.code_package``), so a cluster without mlcloud installed serves the client's
exact code; the model directory arrives as the application's ``working_dir`` (under ``model/``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ray import serve

from mlcloud import modeldir
from serving.app import State, build_app
from serving.batching import MicroBatcher, is_fast
from serving.contracts import Contract, locate_model_dir
from serving.guard import GuardMiddleware
from serving.loaders import load_model

DEPLOYMENT = "mlcloud"
logger = logging.getLogger("mlcloud.serving.ray")
# BentoML's own probe routes are served by the app here: Serve has none of its own.
CONTRACT = Contract(
    "ray",
    None,
    None,
    predict_routes=("/predict",),
    ready_routes=("/readyz",),
    live_routes=("/livez", "/healthz"),
)


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class MlcloudModel:
    """One replica: the model loaded once; ``__serve_build_asgi_app__`` is the HTTP side."""

    def __init__(self, model_dir: str, max_body: int) -> None:
        started = time.perf_counter()
        root = locate_model_dir(Path(model_dir).resolve())
        predictor = load_model(root)  # ModelDirError: the replica fails, deploy reports it
        self.max_body = max_body
        self.state = State(max_body=max_body, workers=1)
        self.state.info = {
            "framework": predictor.framework,
            "model_sha256": modeldir.digest(root),
            "contract": CONTRACT.name,
        }
        if predictor.batchable:
            self.state.batcher = MicroBatcher(predictor.run, inline=is_fast(predictor))
        self.state.predictor = predictor
        logger.info(
            "loaded %s model from %s in %.2fs",
            predictor.framework,
            root,
            time.perf_counter() - started,
        )

    def __serve_build_asgi_app__(self) -> Any:
        app = build_app(CONTRACT, self.state, metrics_route=False)
        return GuardMiddleware(app, max_body=self.max_body, routes=CONTRACT.routes, record=False)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica without its model is unhealthy."""
        if not self.state.ready:
            raise RuntimeError("the model is not loaded")


def build(args: dict[str, Any]) -> Any:
    """The application builder Serve calls with the config's ``args``."""
    deployment: Any = MlcloudModel  # serve.deployment made it a Deployment (untyped decorator)
    return deployment.bind(str(args["model_dir"]), int(args["max_body"]))
