"""S3 staging with content-addressed keys: an object that is already there is never re-sent."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlcloud.errors import NotFound

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
