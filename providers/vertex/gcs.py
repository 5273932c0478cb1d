"""Content-addressed staging in Cloud Storage: an object is uploaded only when it is missing;
and reading a model's manifest back (a re-deploy's input-signature check)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict
from mlcloud.modeldir import MANIFEST
from providers.vertex.errors import read_retry

if TYPE_CHECKING:
    from providers.vertex.provider import VertexProvider

MARKER = ".mlcloud-complete"  # written last, so its presence means the whole prefix is there


def exists(provider: VertexProvider, key: str) -> bool:
    return bool(provider.clients.bucket.blob(key).exists(retry=read_retry()))


def put_if_absent(
    provider: VertexProvider, key: str, data: bytes, content_type: str | None = None
) -> int:
    """Upload ``data`` unless the object exists; returns the bytes sent (0 when it was there)."""
    from google.api_core import exceptions as gexc

    if exists(provider, key):
        return 0
    blob = provider.clients.bucket.blob(key)
    try:
        with provider.mapped():
            # if_generation_match=0: create-only, so a concurrent identical upload is harmless
            blob.upload_from_string(
                data, content_type=content_type or "application/octet-stream", if_generation_match=0
            )
    except Conflict as err:
        if isinstance(err.__cause__, gexc.PreconditionFailed):
            return 0  # someone uploaded it meanwhile: same key, same content
        raise
    return len(data)


def put_files_if_absent(
    provider: VertexProvider, files: Iterable[tuple[str, str]], prefix: str
) -> int:
    """Upload ``(local path, key)`` pairs of one content-hashed ``prefix``; marker-guarded."""
    marker = f"{prefix}/{MARKER}"
    if exists(provider, marker):
        return 0
    sent = sum(put_if_absent(provider, key, Path(path).read_bytes()) for path, key in files)
    put_if_absent(provider, marker, b"", content_type="text/plain")
    return sent


def read_model_manifest(provider: VertexProvider, uri: str) -> dict[str, Any] | None:
    """The ``mlcloud-model.yaml`` object of a ``gs://`` model directory (the folder a Vertex
    Model's artifactUri names). None: not GCS, no such object, or not an mlcloud model."""
    from providers.common import model_manifest

    if not uri.startswith("gs://"):
        return None
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    key = f"{prefix.strip('/')}/{MANIFEST}" if prefix.strip("/") else MANIFEST
    blob = provider.clients.storage.bucket(bucket).get_blob(key, retry=read_retry())
    if blob is None or (blob.size or 0) > model_manifest.MAX_BYTES:
        return None
    return model_manifest.parse(blob.download_as_bytes(retry=read_retry()))
