"""What the fake workspace received, in the vocabulary of an mlcloud plan.

Every write the fake accepts for processing (a PUT, DELETE or the cancel POST on a workspace
resource) is logged as a :class:`Received`: the plan's call name (``jobs.CreateOrUpdate``,
``onlineEndpoints.Update``, ...), the resource it is about and the JSON body as it came off the
wire. Two calls have no body of their own on the wire and are decoded into the plan's format:

* a PUT on an endpoint that already exists is ``onlineEndpoints.Update``, shown as the traffic
  fields it sets: ``{"mirrorTraffic": ...}`` when it only starts mirroring, otherwise
  ``{"traffic": ..., "mirrorTraffic": ...}`` (the switch, which always sets both);
* a DELETE of a deployment (or endpoint) is ``{"name": <deployment>}``.

Values only known after an upload (a code asset's id, a local input's or model's datastore URI)
stay as received; :func:`local_path_of` decodes them back into the local directory the plan
names, after checking that the uploaded files are that directory's files, byte for byte.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOB_URI = re.compile(r"^https://[^/]+/(?P<container>[^/?]+)/(?P<prefix>[^?]*)")
DATASTORE_URI = re.compile(r"/datastores/(?P<store>[^/]+)/paths/(?P<path>.+)$")
DATASTORE_CONTAINER = "azureml-blobstore"  # the fake's workspaceblobstore container


@dataclass(frozen=True)
class Received:
    call: str  # "<collection>.<operation>" as a plan names it
    name: str  # the job, endpoint or model the call is about
    request: dict[str, Any]


_WRITES: list[tuple[str, re.Pattern[str], str]] = [
    ("PUT", re.compile(r"^/jobs/(?P<name>[^/]+)$", re.I), "jobs.CreateOrUpdate"),
    ("POST", re.compile(r"^/jobs/(?P<name>[^/]+)/cancel$", re.I), "jobs.Cancel"),
    ("PUT", re.compile(r"^/codes/(?P<name>[^/]+)/versions/[^/]+$", re.I), "codes.CreateOrUpdate"),
    (
        "PUT",
        re.compile(r"^/environments/(?P<name>[^/]+)/versions/[^/]+$", re.I),
        "environments.CreateOrUpdate",
    ),
    ("PUT", re.compile(r"^/models/(?P<name>[^/]+)/versions/[^/]+$", re.I), "models.CreateOrUpdate"),
    (
        "PUT",
        re.compile(r"^/onlineEndpoints/(?P<name>[^/]+)/deployments/[^/]+$", re.I),
        "onlineDeployments.CreateOrUpdate",
    ),
    (
        "DELETE",
        re.compile(r"^/onlineEndpoints/(?P<name>[^/]+)/deployments/(?P<item>[^/]+)$", re.I),
        "onlineDeployments.Delete",
    ),
    (
        "PUT",
        re.compile(r"^/onlineEndpoints/(?P<name>[^/]+)$", re.I),
        "onlineEndpoints.CreateOrUpdate",
    ),
    ("DELETE", re.compile(r"^/onlineEndpoints/(?P<name>[^/]+)$", re.I), "onlineEndpoints.Delete"),
]


def decode(
    method: str, rest: str, payload: Any, existing: dict[str, Any] | None
) -> Received | None:
    """The plan-format record of one write (``existing``: the resource before it), or None
    for requests that are not writes of a planned resource (reads, keys, upload slots)."""
    for verb, pattern, call in _WRITES:
        m = pattern.match(rest)
        if m is None or verb != method:
            continue
        groups = m.groupdict()
        if call.endswith(".Delete"):
            return Received(call, groups["name"], {"name": groups.get("item") or groups["name"]})
        if call == "jobs.Cancel":
            return Received(call, groups["name"], {})
        body: dict[str, Any] = copy.deepcopy(payload or {})  # the fake mutates what it stores
        if call == "onlineEndpoints.CreateOrUpdate" and existing is not None:
            return Received("onlineEndpoints.Update", groups["name"], _update(body, existing))
        return Received(call, groups["name"], body)
    return None


def _update(body: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    props = body.get("properties", {})
    before = existing.get("properties", {})
    traffic, mirror = props.get("traffic") or {}, props.get("mirrorTraffic") or {}
    if mirror and traffic == (before.get("traffic") or {}):
        return {"mirrorTraffic": mirror}
    return {"traffic": traffic, "mirrorTraffic": mirror}


# ---- uploads -> the local directories they came from -------------------------------------------
def uploaded_files(blobs: dict[str, bytes], uri: str) -> dict[str, bytes]:
    """The files under a blob URL or an ``azureml://.../datastores/<ds>/paths/...`` URI."""
    m = BLOB_URI.match(uri)
    if m is not None:
        prefix = f"{m['container']}/{m['prefix'].strip('/')}/"
    else:
        d = DATASTORE_URI.search(uri)
        if d is None:
            return {}
        prefix = f"{DATASTORE_CONTAINER}/{d['path'].strip('/')}/"
    return {k[len(prefix) :]: v for k, v in blobs.items() if k.startswith(prefix)}


def local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def local_path_of(
    blobs: dict[str, bytes], uri: str, local: Path, extra_prefix: str | None = None
) -> str | None:
    """``str(local)`` when the upload at ``uri`` holds exactly ``local``'s files (besides
    files under ``extra_prefix``, e.g. the launcher mlcloud stages with the code), else None."""
    files = uploaded_files(blobs, uri)
    if extra_prefix is not None:
        files = {k: v for k, v in files.items() if not k.startswith(extra_prefix)}
    if files and files == local_files(local):
        return str(local)
    return None
