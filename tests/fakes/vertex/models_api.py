"""The Model Registry routes of the fake: version aliases, per-version updates, version lists.

It sits in front of :class:`~tests.fakes.vertex.vertex_api.VertexApi` and shares its state
(``vertex.models``: model name → versions, real ``Model`` protos). Behaviour follows the
documented API:

* version aliases must match ``[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]`` (INVALID_ARGUMENT otherwise)
  and are unique within a model; ``default`` is Vertex's own: the first version gets it, it can
  be moved (merged onto another version) but not removed;
* ``models/<id>@<version id or alias>`` names one version; GetModel of the version-less name
  answers the default version;
* MergeVersionAliases (``name`` must name a version) adds aliases, moving any another version
  holds, and removes those prefixed ``-``; it answers the version;
* UpdateModel on ``models/<id>@<version>`` changes the masked fields of that version (labels,
  description, version_description), and refuses other fields.

Writes are recorded in ``vertex.received`` like the other routes.
"""

from __future__ import annotations

import re
from typing import Any

from google.cloud import aiplatform_v1 as v1
from google.protobuf import json_format
from google.protobuf.message import Message

from tests.fakes.vertex.server import ApiError, Request, Response, parse
from tests.fakes.vertex.vertex_api import LOC, VertexApi

ALIAS = re.compile(r"[a-z][a-zA-Z0-9-]{0,126}[a-z-0-9]")
DEFAULT = "default"
UPDATABLE = {"labels", "description", "version_description", "display_name"}


def _json(msg: Message) -> Response:
    return Response(body=json_format.MessageToJson(msg).encode())


def check_alias(alias: str) -> None:
    if not ALIAS.fullmatch(alias):
        raise ApiError(
            "INVALID_ARGUMENT",
            f"Version alias {alias!r} is invalid: it must match {ALIAS.pattern}",
        )
    if re.fullmatch(r"[0-9]+", alias.strip("-")):
        raise ApiError("INVALID_ARGUMENT", f"Version alias {alias!r} looks like a version id")


class ModelsApi:
    def __init__(self, vertex: VertexApi) -> None:
        self.vertex = vertex

    def handle(self, req: Request) -> Response | None:
        m = re.fullmatch(r"/v1/(.+)", req.path)
        if m is None:
            return None
        path = m[1]
        if req.method == "POST" and re.fullmatch(rf"{LOC}/models:upload", path):
            return self._upload(req)
        route = re.fullmatch(rf"({LOC}/models/[^/:]+):(mergeVersionAliases|listVersions)", path)
        if route and req.method == "POST" and route[2] == "mergeVersionAliases":
            return self._merge(req, route[1])
        if route and req.method == "GET" and route[2] == "listVersions":
            return self._list_versions(route[1])
        if req.method == "PATCH" and re.fullmatch(rf"{LOC}/models/[^/:]+", path):
            return self._update(req, path)
        if req.method == "GET" and re.fullmatch(rf"{LOC}/models/[^/:@]+", path):
            return self._default_version(path)
        return None

    def _default_version(self, name: str) -> Response | None:
        """A model named without a version is its default version (None: the shared 404)."""
        for version in self.vertex.models.get(name, []):
            if DEFAULT in version.version_aliases:
                return _json(version)
        return None

    # ---- UploadModel: check the aliases, then the shared handler; default on the first ----
    def _upload(self, req: Request) -> Response:
        request = parse(v1.UploadModelRequest, req.body)
        for alias in request.model.version_aliases:
            check_alias(alias)
            if alias == DEFAULT:
                raise ApiError("INVALID_ARGUMENT", "the default alias is set by Vertex AI")
        response = self.vertex.handle(req)
        assert response is not None
        if response.status == 200:
            for versions in self.vertex.models.values():
                if len(versions) == 1 and DEFAULT not in versions[0].version_aliases:
                    versions[0].version_aliases.append(DEFAULT)
        return response

    # ---- MergeVersionAliases ------------------------------------------------------------------
    def _merge(self, req: Request, name: str) -> Response:
        request = parse(v1.MergeVersionAliasesRequest, req.body)
        request.name = name
        self.vertex._record("ModelService.MergeVersionAliases", request)
        base, _, version = name.partition("@")
        if not version:
            raise ApiError("INVALID_ARGUMENT", f"{name}: the model version must be given (@id)")
        target = self.vertex._model(name)
        adds = [a for a in request.version_aliases if not a.startswith("-")]
        removes = [a[1:] for a in request.version_aliases if a.startswith("-")]
        for alias in [*adds, *removes]:
            check_alias(alias)
        if DEFAULT in removes:
            raise ApiError("INVALID_ARGUMENT", "the default alias cannot be removed, only moved")
        for alias in set(adds) - set(removes):  # adding and removing one alias cancel out
            for other in self.vertex.models[base]:
                if other is not target and alias in other.version_aliases:
                    other.version_aliases.remove(alias)
            if alias not in target.version_aliases:
                target.version_aliases.append(alias)
        for alias in set(removes) - set(adds):
            if alias in target.version_aliases:
                target.version_aliases.remove(alias)
        _touch(target)
        return _json(target)

    # ---- UpdateModel (a version's mutable fields) ---------------------------------------------
    def _update(self, req: Request, name: str) -> Response:
        model = parse(v1.Model, req.body)
        if model.name not in ("", name):
            raise ApiError("INVALID_ARGUMENT", "model.name in the body differs from the URL")
        model.name = name
        mask = [p for p in req.query.get("updateMask", "").split(",") if p]
        snake = [re.sub(r"([A-Z])", lambda c: "_" + c[1].lower(), p) for p in mask]
        if not snake:
            raise ApiError("INVALID_ARGUMENT", "update_mask is required")
        refused = sorted(set(snake) - UPDATABLE)
        if refused:
            raise ApiError("INVALID_ARGUMENT", f"fields {refused} cannot be updated")
        request = v1.UpdateModelRequest.pb()(model=model)
        request.update_mask.paths.extend(snake)
        self.vertex._record("ModelService.UpdateModel", request)
        target = self.vertex._model(name)
        for field in snake:
            target.ClearField(field)
            if field == "labels":
                target.labels.update(model.labels)
            else:
                setattr(target, field, getattr(model, field))
        _touch(target)
        return _json(target)

    def _list_versions(self, name: str) -> Response:
        versions = self.vertex.models.get(name)
        if not versions:
            raise ApiError("NOT_FOUND", f"Model {name} not found")
        response = v1.ListModelVersionsResponse.pb()()
        response.models.extend(versions)
        return _json(response)


def _touch(model: Any) -> None:
    model.update_time.GetCurrentTime()
