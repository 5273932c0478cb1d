"""A model version → its Vertex AI Model Registry entry (pure: reads the model dir and the store).

One Vertex model per mlcloud model name (model id: the name, made Vertex-safe), one Vertex
version per mlcloud version: ``UploadModel`` with ``modelId`` for the first, ``parentModel`` for
the next ones (the store says whether this profile registered the name before). mlcloud's
aliases are Vertex's own version aliases, applied by ``sync_aliases`` (``model_registry.py``);
beside them each version carries the label ``mlcloud-sync``, the fingerprint of the aliases
mlcloud last left there, which tells an alias moved in the console from one mlcloud moved.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import modeldir
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import ModelVersionRecord, Plan, PlanStep
from providers.common.native_sync import fingerprint
from providers.vertex.endpoint_plan import HEALTH_ROUTE, PREDICT_ROUTE, SERVING_PORT, UPLOAD

if TYPE_CHECKING:
    from providers.vertex.provider import VertexProvider

SYNC_LABEL = "mlcloud-sync"
ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]")  # Vertex's rule for version aliases
# aliases mlcloud does not manage: Vertex's own, and the per-content ones deploys add
_UNMANAGED = re.compile(r"default|sha-[0-9a-f]{12}")
_MODEL_ID = re.compile(r"[a-z_][a-z0-9_-]{0,62}")
_LABEL = re.compile(r"[^a-z0-9_-]+")


@dataclass(frozen=True)
class RegisterContext:
    model: str  # projects/P/locations/L/models/<id>
    artifact_uri: str
    prefix: str | None  # the content-hashed GCS folder of a local model dir (None: gs://)
    files: tuple[tuple[str, str], ...]  # (local path, object key) to stage first


def model_id(name: str) -> str:
    """The Vertex model id: the name when Vertex accepts it, else a cleaned name + short hash."""
    if _MODEL_ID.fullmatch(name):
        return name
    clean = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:55]
    if not clean or not clean[0].isalpha():
        clean = f"m-{clean}"[:55]
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def managed(alias: str) -> bool:
    return not _UNMANAGED.fullmatch(alias)


def alias_state(aliases: list[str] | tuple[str, ...]) -> dict[str, str]:
    return {f"alias {a}": "set" for a in aliases if managed(a)}


def plan_register(
    provider: VertexProvider, version: ModelVersionRecord
) -> Plan[ModelVersionRecord]:
    conf = provider.settings
    if not conf.serving_image:
        raise SpecError(
            f"profile {provider.name!r}: serving_image is needed to register models on Vertex",
            hint="set serving_image: to the mlcloud serving container in mlcloud.yaml",
        )
    model = f"{conf.parent}/models/{model_id(version.name)}"
    uri, prefix, files = _artifact(provider, version)
    labels = {
        **conf.labels,
        "mlcloud-model": _LABEL.sub("-", version.name.lower())[:63],
        "mlcloud-version": str(version.version),
        SYNC_LABEL: fingerprint(alias_state([])),
    }
    # proto-JSON of UploadModelRequest (no versionAliases: sync_aliases sets mlcloud's)
    request: dict[str, Any] = {
        "parent": conf.parent,
        "model": {
            "displayName": version.name,
            "artifactUri": uri,
            "labels": labels,
            "containerSpec": {
                "imageUri": conf.serving_image,
                "env": [{"name": "MLCLOUD_SERVING_CONTRACT", "value": "vertex"}],
                "ports": [{"containerPort": SERVING_PORT}],
                "predictRoute": PREDICT_ROUTE,
                "healthRoute": HEALTH_ROUTE,
            },
        },
    }
    if _registered_before(provider, version):
        request["parentModel"] = model
    else:
        request["modelId"] = model_id(version.name)
    if conf.service_account:
        request["serviceAccount"] = conf.service_account
    context = RegisterContext(model, uri, prefix, files)
    return provider.make_plan(
        "register", version.ref, version, [PlanStep(UPLOAD, request)], context=context
    )


def _registered_before(provider: VertexProvider, version: ModelVersionRecord) -> bool:
    """Whether another version of this name already has a Vertex entry on this profile."""
    from mlcloud.errors import NotFoundLocally
    from mlcloud.store import models

    try:
        known = models.versions_of(provider.store, version.name)
    except NotFoundLocally:
        return False  # registered from outside the store (a test, a script): a new model
    return any(
        v.version != version.version
        and v.provider == provider.name
        and (v.details.get("native") or {}).get("vertex_model")
        for v in known
    )


def _artifact(
    provider: VertexProvider, version: ModelVersionRecord
) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
    """A gs:// model dir as is; a local one staged under its content digest (where a deploy of
    the same dir puts it too)."""
    uri = version.uri
    if uri.startswith("gs://"):
        return uri.rstrip("/"), None, ()
    if "://" in uri and not uri.startswith("file://"):
        raise UnsupportedFeature(
            f"registering a model from {uri.split('://', 1)[0]}://",
            provider.where,
            hint="use a local model directory or a gs:// URI",
        )
    root = Path(uri.removeprefix("file://"))
    try:
        manifest = modeldir.verify(root)
        digest = modeldir.digest(root)
    except (modeldir.ModelDirError, OSError) as err:
        raise SpecError(f"model {version.ref}: {root} is not a usable model dir: {err}") from None
    prefix = f"{provider.settings.prefix}/models/{digest}"
    files = tuple(
        (str(root / rel), f"{prefix}/{rel}") for rel in [*manifest["files"], modeldir.MANIFEST]
    )
    return f"gs://{provider.settings.bucket}/{prefix}", prefix, files
