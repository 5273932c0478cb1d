"""Each cloud's serving-container contract, resolved from the environment.

One image serves every cloud; what differs is the port, the routes the platform probes and
posts to, and where it puts the model. All contracts take and answer the same payloads:
``{"instances": [...]}`` -> ``{"predictions": [...]}``. Standard-library only, with
``mlcloud.errors`` (the container entrypoint resolves the contract before BentoML is imported).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcloud.errors import ConfigError

ENV_CONTRACT = "MLCLOUD_SERVING_CONTRACT"
ENV_MODEL = "MLCLOUD_SERVE_MODEL"
ENV_PORT = "MLCLOUD_SERVE_PORT"
CONTRACTS = ("local", "sagemaker", "vertex", "azureml")
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
AZUREML_PORT = 5001  # azureml-inference-server-http's port; the deployment names it
BUNDLED_MODEL = "mlcloud_model"  # a model dir baked into the image, next to serving/


class ContractError(ConfigError):
    """The serving environment is incomplete or contradictory."""


@dataclass(frozen=True)
class Contract:
    """What one platform expects of the container.

    ``ready_routes`` answer 200 only once the model is loaded; ``live_routes`` while the
    process is up. BentoML's own /healthz, /livez and /readyz stay available under every contract.
    """

    name: str
    model_dir: Path | None  # None: not configured (fine for `bentoml build`, fatal at load)
    port: int | None
    predict_routes: tuple[str, ...]
    ready_routes: tuple[str, ...] = ()
    live_routes: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    # A ``gs://`` model location: Vertex prediction nodes have no /gcs mount (that exists for
    # custom training only), so the entrypoint downloads it before the server starts.
    model_uri: str | None = None

    @property
    def routes(self) -> tuple[str, ...]:
        return (*self.predict_routes, *self.ready_routes, *self.live_routes)

    def azureml_inference_config(self) -> dict[str, dict[str, object]]:
        """The ``inference_config`` an Azure ML custom-container environment declares."""
        port = self.port or AZUREML_PORT
        return {
            "liveness_route": {"port": port, "path": "/"},
            "readiness_route": {"port": port, "path": "/health"},
            "scoring_route": {"port": port, "path": "/score"},
        }


def detect(env: Mapping[str, str], *, serve_arg: bool = False) -> str:
    """The contract named by MLCLOUD_SERVING_CONTRACT, else the platform's own variables, else
    SageMaker when the container was started with ``serve`` (SageMaker runs ``docker run IMAGE
    serve`` and sets no variable of its own outside inference pipelines)."""
    named = env.get(ENV_CONTRACT, "").strip().lower()
    if named:
        if named not in CONTRACTS:
            raise ContractError(f"{ENV_CONTRACT}={named!r}: must be one of {', '.join(CONTRACTS)}")
        return named
    if "AIP_HTTP_PORT" in env or "AIP_PREDICT_ROUTE" in env:
        return "vertex"
    if "AZUREML_MODEL_DIR" in env:
        return "azureml"
    if "SAGEMAKER_BIND_TO_PORT" in env or "SM_MODEL_DIR" in env:
        return "sagemaker"
    return "sagemaker" if serve_arg else "local"


def _port(env: Mapping[str, str], var: str, default: int | None) -> int | None:
    raw = env.get(var) or env.get(ENV_PORT)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ContractError(f"{var}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ContractError(f"{var}={raw!r} is out of range")
    return port


def _route(env: Mapping[str, str], var: str, default: str) -> str:
    route = env.get(var) or default
    if not route.startswith("/"):
        raise ContractError(f"{var}={route!r} must start with '/'")
    return route


def bundled_model_dir() -> Path | None:
    """The model baked into an image by ``serving.image.build_image``, if any."""
    path = Path(__file__).resolve().parent.parent / BUNDLED_MODEL
    return path if path.is_dir() else None


def _model_location(env: Mapping[str, str], *platform: str) -> str | None:
    # A model baked into the image wins over the platform's location, MLCLOUD_SERVE_MODEL
    # over both.
    value = env.get(ENV_MODEL)
    if value:
        return value
    bundled = bundled_model_dir()
    if bundled is not None:
        return str(bundled)
    for var in platform:
        value = env.get(var)
        if value:
            return value
    return None


def _contract(name: str, location: str | None, port: int | None, **routes: Any) -> Contract:
    """``location`` is a local path or a ``gs://`` URI (kept as ``model_uri``)."""
    if location and location.startswith("gs://"):
        return Contract(name, None, port, model_uri=location, **routes)
    return Contract(name, Path(location) if location else None, port, **routes)


def resolve(env: Mapping[str, str] | None = None, *, serve_arg: bool = False) -> Contract:
    """The contract for this process's environment (``os.environ`` by default)."""
    env = os.environ if env is None else env
    name = detect(env, serve_arg=serve_arg)
    if name == "sagemaker":
        return _contract(
            name,
            _model_location(env) or SAGEMAKER_MODEL_DIR,
            _port(env, "SAGEMAKER_BIND_TO_PORT", 8080),
            predict_routes=("/invocations",),
            ready_routes=("/ping",),
            extra={"execution_parameters": "/execution-parameters"},
        )
    if name == "vertex":
        return _contract(
            name,
            _model_location(env, "AIP_STORAGE_URI"),
            _port(env, "AIP_HTTP_PORT", 8080),
            predict_routes=(_route(env, "AIP_PREDICT_ROUTE", "/predict"),),
            ready_routes=(_route(env, "AIP_HEALTH_ROUTE", "/health"),),
        )
    if name == "azureml":
        return _contract(
            name,
            _model_location(env, "AZUREML_MODEL_DIR"),
            _port(env, ENV_PORT, AZUREML_PORT),
            predict_routes=("/score",),
            ready_routes=("/health",),
            live_routes=("/",),
        )
    return _contract(
        name, _model_location(env), _port(env, ENV_PORT, None), predict_routes=("/predict",)
    )


def locate_model_dir(path: Path, manifest: str = "mlcloud-model.yaml") -> Path:
    """``path`` itself, or its single subdirectory holding a manifest.

    Platforms unpack the registered artifact into their model directory; an archive or a
    registered folder often adds one level (``/opt/ml/model/iris/…``).
    """
    if (path / manifest).is_file() or not path.is_dir():
        return path
    found = [child for child in sorted(path.iterdir()) if (child / manifest).is_file()]
    return found[0] if len(found) == 1 else path
