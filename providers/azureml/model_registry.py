"""The Azure ML side of mlcloud's registry: model versions in the workspace, aliases as tags.

mlcloud model ``iris`` version 3 is the workspace model ``iris`` version ``3`` (a local model
dir is uploaded by the SDK, files in storage are registered where they are). Every alias the
version holds is a tag ``mlcloud.alias.<alias>`` = the version number (Azure ML has no aliases
of its own); the tag ``mlcloud.sync`` holds the fingerprint of the alias tags mlcloud last left,
so tags edited in the studio are reported as drift (``native_drift``), never overwritten.
``plan_register`` is pure; ``register`` / ``sync_aliases`` / ``native_drift`` call the SDK
inside the provider's error mapping and catch mlcloud errors, never the SDK's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFound, SpecError, UnsupportedFeature
from mlcloud.records import ModelVersionRecord, Plan, PlanStep
from providers.azureml.clients import sdk_output_to_stderr
from providers.azureml.endpoint_plan import CREATE_MODEL, rest
from providers.common import native_sync

if TYPE_CHECKING:
    from azure.ai.ml.entities import Model

    from providers.azureml.provider import AzureMLProvider

ALIAS_TAG = "mlcloud.alias."
SYNC_TAG = "mlcloud.sync"
SHA_PROPERTY = "mlcloud.sha256"
WHERE = "Azure ML"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")


@dataclass(frozen=True)
class RegisterContext:
    model: Model  # the entity create_or_update sends (it uploads a local path first)


def asset_name(name: str) -> str:
    """The workspace model name: the mlcloud name when Azure ML accepts it, else cleaned."""
    if _NAME.match(name):
        return name
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:200] or "model"
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def alias_state(version: int, aliases: list[str]) -> dict[str, str]:
    return {f"tag {ALIAS_TAG}{a}": str(version) for a in aliases}


def plan_register(
    provider: AzureMLProvider, version: ModelVersionRecord
) -> Plan[ModelVersionRecord]:
    from azure.ai.ml.entities import Model

    path = _path(provider, version)
    tags = {
        **provider.settings.tags,
        "mlcloud.model": version.name,
        "mlcloud.version": str(version.version),
        SYNC_TAG: native_sync.fingerprint(alias_state(version.version, [])),
    }
    model = Model(
        name=asset_name(version.name),
        version=str(version.version),
        path=path,
        type="custom_model",
        description=f"mlcloud model {version.ref}",
        tags=tags,
        properties={SHA_PROPERTY: version.sha256} if version.sha256 else {},
    )
    step = PlanStep(CREATE_MODEL, rest(model._to_rest_object()))
    return provider.make_plan(
        "register", version.ref, version, [step], context=RegisterContext(model)
    )


def _path(provider: AzureMLProvider, version: ModelVersionRecord) -> str:
    uri = version.uri
    if uri.startswith(("azureml://", "https://")) or "/datastores/" in uri:
        return uri  # files in storage (a job's model output): registered where they are
    if "://" in uri and not uri.startswith("file://"):
        raise UnsupportedFeature(
            f"registering a model from {uri.split('://', 1)[0]}://",
            provider.where,
            hint="use a local model directory or an azureml:// datastore URI",
        )
    from mlcloud import modeldir

    root = Path(uri.removeprefix("file://"))
    try:
        modeldir.verify(root)
    except (OSError, modeldir.ModelDirError) as err:
        raise SpecError(f"model {version.ref}: {root} is not a usable model dir: {err}") from None
    return str(root)


def register(provider: AzureMLProvider, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
    """Create the model version (the SDK uploads a local dir first); the same mlcloud version
    already there is success, another model under that name and version a Conflict."""
    model = plan.context_as(RegisterContext).model
    version = plan.spec
    existing = _get(provider, str(model.name), str(model.version))
    if existing is None:
        with sdk_output_to_stderr():
            existing = provider.clients.ml.models.create_or_update(model)
    elif (existing.tags or {}).get("mlcloud.version") != str(version.version) or (
        version.sha256 and (existing.properties or {}).get(SHA_PROPERTY) != version.sha256
    ):
        raise provider.origin.error(
            Conflict,
            f"{WHERE} already has model {model.name} version {model.version}, "
            f"not mlcloud's {version.ref}",
            code="ModelVersionExists",
            hint="archive or delete that version in the workspace, or register under "
            "another model name",
        )
    return {"azureml_model": str(model.name), "azureml_version": str(existing.version),
            "asset_id": str(existing.id), "path": str(existing.path)}  # fmt: skip


def _get(provider: AzureMLProvider, name: str, version: str) -> Model | None:
    try:
        with provider.mapped():
            found: Model = provider.clients.ml.models.get(name=name, version=version)
    except NotFound:
        return None
    return found


def _live(model: Model) -> dict[str, str]:
    return {f"tag {k}": str(v) for k, v in (model.tags or {}).items() if k.startswith(ALIAS_TAG)}


def sync_aliases(
    provider: AzureMLProvider, version: ModelVersionRecord, aliases: list[str]
) -> list[str]:
    """Set the alias tags (and the fingerprint tag) on the model version, unless it was
    changed outside mlcloud since the last sync: then it is left and the drift returned."""
    native = version.details["native"]
    model = _get(provider, native["azureml_model"], native["azureml_version"])
    if model is None:
        return [_gone(native)]
    live = _live(model)
    expected = alias_state(version.version, aliases)
    tags = dict(model.tags or {})
    decision = native_sync.decide(live, tags.get(SYNC_TAG), expected, WHERE)
    if not decision.write:
        return decision.left
    tags = {k: v for k, v in tags.items() if not k.startswith(ALIAS_TAG)}
    tags.update({f.removeprefix("tag "): v for f, v in expected.items()})
    tags[SYNC_TAG] = native_sync.fingerprint(expected)
    model.tags = tags  # tags are the mutable part of a model version
    with sdk_output_to_stderr():
        provider.clients.ml.models.create_or_update(model)
    return []


def native_drift(
    provider: AzureMLProvider, version: ModelVersionRecord, aliases: list[str]
) -> list[str]:
    """What the workspace's model version shows that mlcloud's record does not (a read)."""
    native = version.details["native"]
    model = _get(provider, native["azureml_model"], native["azureml_version"])
    if model is None:
        return [_gone(native)]
    lines = []
    if native.get("path") and str(model.path) != native["path"]:
        lines.append(f"path: {WHERE} has {model.path!r}, mlcloud registered {native['path']!r}")
    sha = (model.properties or {}).get(SHA_PROPERTY)
    if version.sha256 and sha != version.sha256:
        lines.append(f"sha256: {WHERE} has {sha!r}, mlcloud has {version.sha256!r}")
    live, expected = _live(model), alias_state(version.version, aliases)
    return lines + native_sync.drift(live, (model.tags or {}).get(SYNC_TAG), expected, WHERE)


def _gone(native: dict[str, Any]) -> str:
    return (
        f"model {native['azureml_model']} version {native['azureml_version']} "
        f"no longer exists in {WHERE}"
    )
