"""Model versions the way the Azure ML service keeps them (the fake's ``_put`` asks here first).

A model version is immutable once created except for its description, tags and stage: a PUT
on an existing version that changes its ``modelUri``, ``modelType`` or an existing property is
refused with a 400 ``UserError`` and the stored version is left as it was; a PUT changing only
the mutable fields updates it. Versions are named ``models/<name>/versions/<version>``, the
name by the asset-name rule (letters, digits, ``-``, ``_``, ``.``).
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.azureml.common import Response, error

VERSION_PATH = re.compile(r"^/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", re.I)
ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
IMMUTABLE = ("modelUri", "modelType")


def refuse_put(rest: str, payload: Any, existing: dict[str, Any] | None) -> Response | None:
    """The service's answer to a model-version PUT it refuses, or None to store it."""
    m = VERSION_PATH.match(rest)
    if m is None:
        return None
    if not ASSET_NAME.match(m["name"]):
        return error(400, "UserError", f"model name {m['name']!r} is not a valid asset name")
    if existing is None:
        return None
    before = existing.get("properties", {})
    after = (payload or {}).get("properties", {})
    for field in IMMUTABLE:
        if after.get(field) != before.get(field):
            return error(
                400,
                "UserError",
                f"{field} of model {m['name']} version {m['version']} cannot be changed: "
                "model versions are immutable (only description, tags and stage can be updated)",
            )
    old_props, new_props = before.get("properties") or {}, after.get("properties") or {}
    changed = sorted(k for k in old_props if k in new_props and new_props[k] != old_props[k])
    if changed:
        return error(400, "UserError", f"properties {changed} of a model version cannot change")
    return None
