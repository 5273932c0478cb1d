"""``azureml://`` datastore URIs, read through the workspace's datastores as blob containers.

Both forms Azure ML writes: ``azureml://datastores/<ds>/paths/<path>`` (the profile's workspace)
and ``azureml://subscriptions/<s>/resourcegroups/<rg>/workspaces/<ws>/datastores/<ds>/paths/
<path>`` (any workspace the profile's credential reaches). A datastore resolves through the
MLClient (``datastores.get`` and its secret: an expiring SAS or the account key) to an
azure-storage-blob ``ContainerClient``, via the SDK's own datastore access (the same helpers it
uploads code with). One module for every reader: request capture, job metrics, pipeline data
triggers and artifact copies, and the model manifest a re-deploy compares.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.modeldir import MANIFEST
from mlcloud.provider import StoredObject
from providers.common import model_manifest as manifests

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

    from providers.azureml.provider import AzureMLProvider

_SHORT = re.compile(r"^azureml://datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$", re.I)
_LONG = re.compile(
    r"^azureml://subscriptions/(?P<sub>[^/]+)/resource_?groups/(?P<rg>[^/]+)/"
    r"(?:providers/Microsoft\.MachineLearningServices/)?workspaces/(?P<ws>[^/]+)/"
    r"datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$",
    re.I,
)
CONTAINER_TTL_S = 600.0  # a datastore's SAS is asked for again after this (it expires)
MAX_MANIFEST_BYTES = 1 << 20  # a bigger one is not downloaded at all


@dataclass(frozen=True)
class Location:
    """Where a datastore URI points: its workspace (None: the profile's), datastore, path."""

    workspace: tuple[str, str, str] | None  # (subscription, resource group, workspace)
    datastore: str
    path: str  # inside the container, no leading or trailing "/"


def parse(uri: str) -> Location | None:
    """The location of an ``azureml://`` datastore URI; None for anything else."""
    if m := _SHORT.match(uri):
        return Location(None, m["ds"], m["path"].strip("/"))
    if m := _LONG.match(uri):
        return Location((m["sub"], m["rg"], m["ws"]), m["ds"], m["path"].strip("/"))
    return None


def location(uri: str, where: str) -> Location:
    found = parse(uri)
    if found is None:
        raise SpecError(
            f"{uri} is not an Azure ML datastore URI ({where})",
            hint="use azureml://datastores/<name>/paths/<path> (or the long form with "
            "subscriptions/<s>/resourcegroups/<rg>/workspaces/<ws>/ before datastores/)",
        )
    return found


class Datastores:
    """A provider's datastores as blob containers, each resolved once per ``CONTAINER_TTL_S``
    (a listing and its downloads cost two ARM calls, not two per object)."""

    def __init__(self, provider: AzureMLProvider) -> None:
        self.provider = provider
        self._containers: dict[tuple[Any, str], tuple[float, ContainerClient]] = {}

    def container(self, datastore: str, workspace: tuple[str, str, str] | None = None) -> Any:
        """The blob container behind ``datastore`` of ``workspace`` (default: the profile's)."""
        key = (workspace, datastore.lower())
        cached = self._containers.get(key)
        if cached is not None and time.monotonic() - cached[0] < CONTAINER_TTL_S:
            return cached[1]
        container = self._resolve(datastore, self._ml(workspace))
        self._containers[key] = (time.monotonic(), container)
        return container

    def _ml(self, workspace: tuple[str, str, str] | None) -> Any:
        settings = self.provider.settings
        own = (settings.subscription_id, settings.resource_group, settings.workspace)
        if workspace is None or [w.lower() for w in workspace] == [w.lower() for w in own]:
            return self.provider.clients.ml
        return self.provider.other_workspace(*workspace).ml

    def _resolve(self, datastore: str, ml: Any) -> Any:
        from azure.ai.ml._artifacts._artifact_utilities import get_datastore_info
        from azure.ai.ml._artifacts._blob_storage_helper import BlobStorageClient
        from azure.ai.ml._utils._storage_utils import get_storage_client
        from azure.ai.ml.exceptions import MlException

        try:
            info = get_datastore_info(ml.datastores, datastore)
            client = get_storage_client(**info)
        except MlException as err:  # a file share: not a container (the SDK's own refusal)
            raise self._refused(datastore, str(err)) from None
        if not isinstance(client, BlobStorageClient):  # ADLS Gen2 has its own client
            raise self._refused(datastore, f"a {info['storage_type']} datastore")
        return client.container_client

    def _refused(self, datastore: str, why: str) -> UnsupportedFeature:
        return UnsupportedFeature(
            f"reading datastore {datastore!r} ({why})",
            self.provider.where,
            hint="mlcloud reads Azure blob datastores: use one (e.g. workspaceblobstore)",
        )

    # ---- objects -------------------------------------------------------------------------
    def list_objects(self, uri: str) -> list[StoredObject]:
        """The blob ``path`` names, or every blob under the folder ``path/`` (not ``path-2``)."""
        loc = location(uri, self.provider.where)
        container = self.container(loc.datastore, loc.workspace)
        prefix = loc.path
        out = []
        for blob in container.list_blobs(name_starts_with=prefix):
            name = str(blob.name)
            if name == prefix:
                relative = ""
            elif not prefix or name.startswith(prefix + "/"):
                relative = name[len(prefix) :].lstrip("/")
            else:
                continue
            out.append(StoredObject(relative, str(blob.etag), int(blob.size or 0)))
        return out

    def download(self, uri: str, relative: str, out: BinaryIO) -> None:
        """Stream one blob (``relative`` under ``uri``, as ``list_objects`` named it)."""
        loc = location(uri, self.provider.where)
        name = f"{loc.path}/{relative}".strip("/") if relative else loc.path
        blob = self.container(loc.datastore, loc.workspace).get_blob_client(name)
        for chunk in blob.download_blob().chunks():  # never whole in memory
            out.write(chunk)

    def read(self, datastore: str, name: str, limit: int, workspace: Any = None) -> bytes | None:
        """One blob's bytes; None when it is missing, ``TooLarge`` (unread) over ``limit``."""
        from azure.core.exceptions import ResourceNotFoundError

        blob = self.container(datastore, workspace).get_blob_client(name)
        try:
            size = int(blob.get_blob_properties().size)
            if size > limit:
                raise TooLarge(f"{size} bytes, over the {limit} read")
            data: bytes = blob.download_blob().readall()
        except ResourceNotFoundError:
            return None
        return data


class TooLarge(ValueError):
    """A blob over the size a reader accepts (not downloaded)."""


# ---- the manifest of a model where Azure ML keeps it ------------------------------------------
_ASSET = re.compile(
    r"^azureml:(?:(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<version>[^:/]+)"
    r"|/?subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/"
    r"workspaces/[^/]+/models/(?P<id_name>[^/]+)/versions/(?P<id_version>[^/]+))$",
    re.I,
)


def model_manifest(provider: AzureMLProvider, uri: str) -> dict[str, Any] | None:
    """``mlcloud-model.yaml`` of a model folder in a datastore (``azureml://...``), or of a
    model registered in the profile's workspace (``azureml:name:version`` or its asset id,
    what an endpoint record keeps: its folder); None when there is none."""
    asset = uri if uri.startswith("azureml:") else f"azureml:{uri}"
    if (m := _ASSET.match(asset)) is not None:
        name, version = m["name"] or m["id_name"], m["version"] or m["id_version"]
        model = provider.clients.ml.models.get(name, version=version)
        uri = str(model.path or "")
    loc = parse(uri)
    if loc is None:
        return None
    name = loc.path if loc.path.endswith(MANIFEST) else f"{loc.path}/{MANIFEST}".lstrip("/")
    try:
        data = provider.datastores.read(loc.datastore, name, MAX_MANIFEST_BYTES, loc.workspace)
    except TooLarge:  # not an mlcloud manifest: the check is skipped
        return None
    return manifests.parse(data)
