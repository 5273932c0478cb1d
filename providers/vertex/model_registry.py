"""The Vertex AI Model Registry side of mlcloud's registry: upload a version, mirror its
aliases as Vertex version aliases, read back what differs.

Planning is ``registry_plan.py``. Code here runs inside the provider's error mapping and catches
mlcloud errors (``NotFound``, ``Conflict``), never the SDK's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFound, SpecError
from mlcloud.records import ModelVersionRecord, Plan
from providers.common import native_sync
from providers.common.waiting import wait_until
from providers.vertex import gcs
from providers.vertex.endpoint_plan import UPLOAD
from providers.vertex.errors import read_retry
from providers.vertex.registry_plan import (
    ALIAS,
    SYNC_LABEL,
    RegisterContext,
    alias_state,
    managed,
)

if TYPE_CHECKING:
    from google.cloud.aiplatform_v1 import Model

    from providers.vertex.endpoints import Operation
    from providers.vertex.provider import VertexProvider

WHERE = "Vertex AI"
CALL_TIMEOUT = 60.0
OPERATION_POLL = 2.0


def register(provider: VertexProvider, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
    """Stage the model files, then UploadModel (a new version of the model when it exists)."""
    from google.cloud import aiplatform_v1

    ctx = plan.context_as(RegisterContext)
    if [s.call for s in plan.steps] != [UPLOAD]:
        raise SpecError(f"plan {plan.id}: expected one {UPLOAD}, got {plan.steps}")
    if ctx.prefix is not None:
        gcs.put_files_if_absent(provider, ctx.files, ctx.prefix)
    proto = aiplatform_v1.UploadModelRequest.from_json(json.dumps(plan.steps[0].request))
    version = plan.spec
    existing = _already_uploaded(provider, ctx.model, version) if proto.parent_model else None
    if existing is not None:  # a retried register: that version is this one
        return _native(ctx, existing)
    models = provider.clients.models
    try:
        with provider.mapped():
            operation = models.upload_model(request=proto, timeout=CALL_TIMEOUT)
    except Conflict:
        if not proto.model_id:
            raise
        # the model exists but this store never registered it: add a version to it instead
        proto.parent_model, proto.model_id = ctx.model, ""
        operation = models.upload_model(request=proto, timeout=CALL_TIMEOUT)
    result: Any = _wait(provider, operation, f"the upload of {version.ref}")
    return {
        "vertex_model": ctx.model,
        "version_id": result.model_version_id,
        "artifact_uri": ctx.artifact_uri,
    }


def _wait(provider: VertexProvider, operation: Operation, what: str) -> object:
    wait_until(
        lambda: operation.done(retry=read_retry()),
        bool,
        timeout=provider.settings.operation_timeout,
        poll=OPERATION_POLL,
        what=what,
        origin=provider.origin,
    )
    return operation.result()


def _native(ctx: RegisterContext, model: Model) -> dict[str, Any]:
    return {
        "vertex_model": ctx.model,
        "version_id": model.version_id,
        "artifact_uri": ctx.artifact_uri,
    }


def _already_uploaded(
    provider: VertexProvider, model: str, version: ModelVersionRecord
) -> Model | None:
    """The version of ``model`` labelled as this mlcloud version, if one was uploaded."""
    try:
        with provider.mapped():
            pages = provider.clients.models.list_model_versions(name=model, retry=read_retry())
            for found in pages:
                if found.labels.get("mlcloud-version") == str(version.version):
                    return found
    except NotFound:
        pass
    return None


def _get(provider: VertexProvider, name: str) -> Model:
    return provider.clients.models.get_model(name=name, retry=read_retry(), timeout=30.0)


def sync_aliases(
    provider: VertexProvider, version: ModelVersionRecord, aliases: list[str]
) -> list[str]:
    """MergeVersionAliases to show exactly ``aliases`` (Vertex moves an alias another version
    holds), then the ``mlcloud-sync`` label. An entry changed outside mlcloud is left as is."""
    native = version.details["native"]
    name = f"{native['vertex_model']}@{native['version_id']}"
    left = _unmirrored(aliases)
    aliases = [a for a in aliases if _ok(a)]
    try:
        with provider.mapped():
            live_model = _get(provider, name)
    except NotFound:
        return [_gone(name)]
    live = alias_state(list(live_model.version_aliases))
    expected = alias_state(aliases)
    decision = native_sync.decide(live, live_model.labels.get(SYNC_LABEL), expected, WHERE)
    if not decision.write:
        return left + decision.left
    adds = [a for a in aliases if f"alias {a}" not in live]
    held = [a for a in adds if not _movable(provider, native["vertex_model"], name, a)]
    left += [f"alias {a}: held by a version changed outside mlcloud, not moved" for a in held]
    merge = [a for a in adds if a not in held]
    merge += [f"-{f.removeprefix('alias ')}" for f in live if f not in expected]
    if merge:
        provider.clients.models.merge_version_aliases(
            name=name, version_aliases=merge, timeout=CALL_TIMEOUT
        )
    written = alias_state([a for a in aliases if a not in held])
    _set_label(provider, name, dict(live_model.labels), native_sync.fingerprint(written))
    return left


def _unmirrored(aliases: list[str]) -> list[str]:
    """mlcloud aliases Vertex cannot hold (its alias rule, or its own ``default``)."""
    return [
        f"alias {a}: not a valid Vertex version alias, not mirrored" for a in aliases if not _ok(a)
    ]


def _ok(alias: str) -> bool:
    return bool(ALIAS.fullmatch(alias)) and managed(alias)


def _movable(provider: VertexProvider, model: str, name: str, alias: str) -> bool:
    """Whether Vertex may take ``alias`` from the version holding it: nobody holds it, or the
    holder is as mlcloud left it (mlcloud's own move, the holder not synced yet)."""
    try:
        with provider.mapped():
            holder = _get(provider, f"{model}@{alias}")
    except NotFound:
        return True
    if f"{model}@{holder.version_id}" == name:
        return True
    state = alias_state(list(holder.version_aliases))
    return holder.labels.get(SYNC_LABEL) == native_sync.fingerprint(state)


def _set_label(provider: VertexProvider, name: str, labels: dict[str, str], value: str) -> None:
    from google.cloud import aiplatform_v1
    from google.protobuf import field_mask_pb2

    if labels.get(SYNC_LABEL) == value:
        return
    model = aiplatform_v1.Model(name=name, labels={**labels, SYNC_LABEL: value})
    provider.clients.models.update_model(
        model=model, update_mask=field_mask_pb2.FieldMask(paths=["labels"]), timeout=CALL_TIMEOUT
    )


def native_drift(
    provider: VertexProvider, version: ModelVersionRecord, aliases: list[str]
) -> list[str]:
    """What the Vertex version shows that mlcloud's record does not (a read)."""
    native = version.details["native"]
    name = f"{native['vertex_model']}@{native['version_id']}"
    try:
        with provider.mapped():
            live_model = _get(provider, name)
    except NotFound:
        return [_gone(name)]
    lines = []
    if live_model.artifact_uri != native.get("artifact_uri"):
        lines.append(
            f"artifact: {WHERE} has {live_model.artifact_uri!r}, "
            f"mlcloud registered {native.get('artifact_uri')!r}"
        )
    live = alias_state(list(live_model.version_aliases))
    expected = alias_state([a for a in aliases if _ok(a)])
    marker = live_model.labels.get(SYNC_LABEL)
    return lines + _unmirrored(aliases) + native_sync.drift(live, marker, expected, WHERE)


def _gone(name: str) -> str:
    return f"model version {name} no longer exists in {WHERE}"
