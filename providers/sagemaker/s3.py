"""S3 staging with content-addressed keys: an object that is already there is never re-sent;
and reading a model's manifest back (a re-deploy's input-signature check)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlcloud.errors import NotFound
from mlcloud.modeldir import MANIFEST

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider


def exists(provider: SageMakerProvider, bucket: str, key: str) -> bool:
    try:
        with provider.mapped():
            provider.clients.s3.head_object(Bucket=bucket, Key=key)
    except NotFound:
        return False
    return True


def put_if_missing(
    provider: SageMakerProvider, bucket: str, key: str, data: bytes, content_type: str
) -> int:
    """Upload ``data`` unless the (content-hash) key exists; return the bytes sent."""
    if exists(provider, bucket, key):
        return 0
    provider.clients.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return len(data)


def upload_tree_if_missing(
    provider: SageMakerProvider, bucket: str, key_prefix: str, files: tuple[tuple[str, str], ...]
) -> int:
    """Upload files under ``key_prefix/``; a ``<key_prefix>.complete`` marker written last
    (outside the channel's prefix, so the job never sees it) makes later submits skip it."""
    marker = f"{key_prefix}.complete"
    if exists(provider, bucket, marker):
        return 0
    s3 = provider.clients.s3
    sent = 0
    for rel, path in files:
        with open(path, "rb") as f:
            data = f.read()
        s3.put_object(Bucket=bucket, Key=f"{key_prefix}/{rel}", Body=data)
        sent += len(data)
    s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    return sent


def read_model_manifest(provider: SageMakerProvider, uri: str) -> dict[str, Any] | None:
    """The ``mlcloud-model.yaml`` of an ``s3://`` model: streamed out of a ``model.tar.gz``
    (stops at the member, bounded), or the object under a model-dir prefix. None: not S3, no
    such object, or not an mlcloud model."""
    from providers.common import model_manifest

    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    archive = key.endswith(".tar.gz")
    if not archive:
        key = f"{key.rstrip('/')}/{MANIFEST}" if key.strip("/") else MANIFEST
    try:
        body = provider.clients.s3.get_object(Bucket=bucket, Key=key)["Body"]
    except NotFound:
        return None
    try:
        if archive:
            return model_manifest.from_tar(body)
        return model_manifest.parse(body.read(model_manifest.MAX_BYTES + 1))
    finally:
        body.close()
