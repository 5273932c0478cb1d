"""Deployment -> the Ray Serve application that serves it (pure).

The plan's one step is ``serve.PutApplications``: the body of ``PUT /api/serve/applications/``
on the cluster's dashboard (Serve's REST API, the bearer token of the Jobs API), holding this
endpoint's application. Serve takes the whole cluster's config in one PUT, so ``deploy`` sends
the applications that run already (read back with ``GET``) with this one added or replaced;
the plan shows exactly the part that is this endpoint's, and the proxy options.

How the pieces reach every node (no shared disk needed):

* the model directory is the application's ``runtime_env`` ``working_dir``: a zip of the files
  its manifest lists, under ``model/``, in the cluster's package store as
  ``gcs://_ray_pkg_<sha256 of the manifest>.zip``. The manifest holds every file's sha256, so
  its own hash names the whole directory: an unchanged model uploads nothing, and the URI is
  known without reading the model; ``deploy`` verifies the files and uploads the zip when the
  cluster lacks it. Ray keeps such a
  package at most 500 MiB: larger models are refused at plan time;
* the serving code (``mlcloud``, ``serving`` and ``providers/ray/serve_app.py``) is a
  ``py_modules`` zip addressed by its sha256, so the replicas run the client's exact code
  (``serving.loaders`` and ``serving.app``), whether or not the cluster has mlcloud installed.
  The cluster's Python needs the model's framework (scikit-learn, skops, ...) and Ray Serve.

Scaling: ``replicas: N`` -> ``num_replicas``; ``{min, max, target}`` -> ``autoscaling_config``
(``min_replicas``, ``max_replicas``, ``target_ongoing_requests``). ``max_surge_percent: 100``
makes an update start the new replicas before the old ones stop (Serve's default stops first).
The proxy runs on the head node only, on ``serve_host:serve_port`` (127.0.0.1:8000 by default):
the endpoint's URL is that address plus ``/<name>``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mlcloud import modeldir
from mlcloud.errors import ModelError, SpecError, UnsupportedFeature
from mlcloud.records import PlanStep
from providers.ray.job_plan import PACKAGE_PREFIX, Package
from providers.ray.settings import is_loopback

if TYPE_CHECKING:
    from mlcloud.records import Plan
    from mlcloud.specs import Deployment, Resources
    from providers.ray.provider import RayProvider

PUT_APPLICATIONS = "serve.PutApplications"
IMPORT_PATH = "providers.ray.serve_app:build"
DEPLOYMENT = "mlcloud"  # serve_app.DEPLOYMENT (not imported: that needs ray.serve)
MODEL_DIR = "model"  # where the model lies inside the application's working_dir
PROXY_LOCATION = "HeadOnly"
# Requests one replica takes at once. Serve's default (5) makes the proxy back off and retry
# once 5 are in flight: measured at 32 concurrent clients, 17 req/s and timeouts. The replica
# is async and micro-batches (its own queue is bounded: 503 past 1024), like the BentoML one.
MAX_ONGOING = 256
MAX_PACKAGE_BYTES = 500 * 1024 * 1024  # Ray's limit for one runtime_env package
MAX_BODY_ENV, DEFAULT_MAX_BODY = "MLCLOUD_SERVE_MAX_BODY", 10 * 1024 * 1024
# The code the replicas import, shipped as one py_modules zip (paths under the repo root).
_CODE_PACKAGES = ("mlcloud", "serving")
_CODE_FILES = ("providers/__init__.py", "providers/ray/__init__.py", "providers/ray/serve_app.py")
_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class RayDeployContext:
    model_dir: str  # on this machine
    model_sha256: str  # modeldir.digest (what the endpoint record and trust grants name)
    model_uri: str  # gcs://_ray_pkg_<sha256 of the manifest file>.zip
    code: Package  # the py_modules zip
    url: str  # where callers reach the endpoint (the proxy + route prefix)


def plan_deploy(provider: RayProvider, deployment: Deployment) -> Plan[Deployment]:
    _refuse(deployment, provider.where)
    root, manifest, raw = _model(deployment)
    digest = modeldir.manifest_digest(manifest)
    code = code_package()
    model_uri = _model_uri(raw)
    settings = provider.settings
    app: dict[str, Any] = {
        "name": deployment.name,
        "route_prefix": route_prefix(deployment.name),
        "import_path": IMPORT_PATH,
        "args": {"model_dir": MODEL_DIR, "max_body": _max_body(deployment)},
        "runtime_env": {
            "working_dir": model_uri,
            "py_modules": [code.uri],
            "env_vars": dict(sorted(deployment.env.items())),
        },
        "deployments": [_deployment(deployment)],
    }
    request = {
        "proxy_location": PROXY_LOCATION,
        "http_options": {"host": settings.serve_host, "port": settings.serve_port},
        "applications": [app],
    }
    context = RayDeployContext(
        model_dir=str(root),
        model_sha256=digest,
        model_uri=model_uri,
        code=code,
        url=proxy_url(provider) + route_prefix(deployment.name),
    )
    step = PlanStep(PUT_APPLICATIONS, request)
    return provider.make_plan("deploy", deployment.name, deployment, (step,), context=context)


def route_prefix(name: str) -> str:
    return f"/{name}"


def proxy_url(provider: RayProvider) -> str:
    """Where a client reaches the Serve proxy: the head's host (the dashboard's, or the proxy's
    own when it listens on one address), the profile's ``serve_port``."""
    settings = provider.settings
    host = settings.serve_host
    if host in ("0.0.0.0", "::") or (is_loopback(host) and not settings.local):  # noqa: S104
        host = urlsplit(settings.address or "http://127.0.0.1").hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.serve_port}"


# ---- the pieces ----------------------------------------------------------------------------------
def _refuse(deployment: Deployment, where: str) -> None:
    if deployment.traffic:
        raise UnsupportedFeature(
            "traffic split", where, hint="drop traffic: a Ray endpoint serves one model"
        )
    if deployment.port is not None or deployment.host is not None:
        raise UnsupportedFeature(
            "a per-endpoint host/port",
            where,
            hint="every endpoint is behind the cluster's Serve proxy: set serve_host / "
            "serve_port in the profile",
        )
    if deployment.capture is not None:  # the replicas' disks are the cluster's, not readable here
        raise UnsupportedFeature(
            "request capture", where, hint="drop capture: capture runs on local and the clouds"
        )


def _model(deployment: Deployment) -> tuple[Path, dict[str, Any], bytes]:
    """The model directory, its manifest, and the manifest file's bytes."""
    model = deployment.model.removeprefix("file://")
    if "://" in model:
        raise SpecError(
            f"model: {deployment.model!r}: a Ray endpoint ships a model directory from this "
            "machine (download the model first)"
        )
    root = Path(model).expanduser().resolve()
    try:
        manifest = modeldir.read_manifest(root)
        raw = (root / modeldir.MANIFEST).read_bytes()
    except (OSError, ModelError) as exc:
        raise SpecError(f"model: {root} is not an mlcloud model directory ({exc})") from None
    size = sum((root / rel).stat().st_size for rel in manifest.get("files") or {})
    if size > MAX_PACKAGE_BYTES:
        raise SpecError(
            f"model: {root} holds {size / 2**20:.0f} MiB; a Ray cluster's package store takes "
            f"at most {MAX_PACKAGE_BYTES // 2**20} MiB per package"
        )
    return root, manifest, raw


def _model_uri(manifest_bytes: bytes) -> str:
    return f"{PACKAGE_PREFIX}{hashlib.sha256(manifest_bytes).hexdigest()}.zip"


def _max_body(deployment: Deployment) -> int:
    """The request-body limit of the BentoML service (the spec checked the number)."""
    return int(deployment.env.get(MAX_BODY_ENV, DEFAULT_MAX_BODY))


def _deployment(deployment: Deployment) -> dict[str, Any]:
    """The one Serve deployment of the application: scaling, resources, surge on update."""
    config: dict[str, Any] = {
        "name": DEPLOYMENT,
        **_scaling(deployment),
        "max_ongoing_requests": MAX_ONGOING,
        "max_surge_percent": 100,
    }
    actor = actor_options(deployment.resources)
    if actor:
        config["ray_actor_options"] = actor
    return config


def _scaling(deployment: Deployment) -> dict[str, Any]:
    """``replicas`` as Serve's: a fixed count, or the autoscaling bounds and target."""
    replicas = deployment.replicas
    if isinstance(replicas, int):
        return {"num_replicas": replicas}
    if replicas.min == replicas.max and replicas.target is None:
        return {"num_replicas": replicas.max}
    autoscaling: dict[str, Any] = {
        "min_replicas": replicas.min,
        "max_replicas": replicas.max,
        "initial_replicas": max(replicas.min, 1),  # ready to answer when deploy returns
    }
    if replicas.target is not None:
        autoscaling["target_ongoing_requests"] = replicas.target
    return {"autoscaling_config": autoscaling}


def actor_options(res: Resources) -> dict[str, Any]:
    """``resources`` as each replica's Ray actor options (Serve's defaults when unset)."""
    out: dict[str, Any] = {}
    if res.cpus is not None:
        out["num_cpus"] = res.cpus
    if res.accelerator_count:
        out["num_gpus"] = res.accelerator_count
    if res.memory_bytes is not None:
        out["memory"] = res.memory_bytes
    if res.accelerator_type:
        out["accelerator_type"] = res.accelerator_type
    return out


# ---- packages ------------------------------------------------------------------------------------
def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A reproducible zip: sorted names, fixed timestamps and modes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def code_package() -> Package:
    """The serving code the replicas import, as a ``py_modules`` zip named by its sha256."""
    repo = Path(__file__).resolve().parents[2]
    entries = [(rel, (repo / rel).read_bytes()) for rel in _CODE_FILES]
    for package in _CODE_PACKAGES:
        for path in sorted((repo / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                entries.append((path.relative_to(repo).as_posix(), path.read_bytes()))
    data = _zip(entries)
    return Package(f"{PACKAGE_PREFIX}{hashlib.sha256(data).hexdigest()}.zip", data)


def model_package(model_dir: str, planned_uri: str) -> Package:
    """The model directory as the application's ``working_dir`` zip (files under ``model/``),
    read after verifying every file against the manifest: a model changed since it was planned
    is a ``ModelError``."""
    root = Path(model_dir)
    raw = (root / modeldir.MANIFEST).read_bytes()
    if _model_uri(raw) != planned_uri:
        raise ModelError(f"model {root} changed since it was planned", hint="plan it again")
    manifest = modeldir.verify(root)
    files = [(f"{MODEL_DIR}/{rel}", (root / rel).read_bytes()) for rel in sorted(manifest["files"])]
    data = _zip([(f"{MODEL_DIR}/{modeldir.MANIFEST}", raw), *files])
    return Package(planned_uri, data)
