"""S3 staging with content-addressed keys: an object that is already there is never re-sent."""

from __future__ import annotations

from typing import Any

from mlcloud.errors import NotFound
from providers.sagemaker.errors import map_error


def exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:
        if isinstance(map_error(e), NotFound):
            return False
        raise


def put_if_missing(s3: Any, bucket: str, key: str, data: bytes, content_type: str) -> int:
    """Upload ``data`` unless the (content-hash) key exists; return the bytes sent."""
    if exists(s3, bucket, key):
        return 0
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return len(data)


def upload_tree_if_missing(
    s3: Any, bucket: str, key_prefix: str, files: tuple[tuple[str, str], ...]
) -> int:
    """Upload files under ``key_prefix/``; a ``<key_prefix>.complete`` marker written last
    (outside the channel's prefix, so the job never sees it) makes later submits skip it."""
    marker = f"{key_prefix}.complete"
    if exists(s3, bucket, marker):
        return 0
    sent = 0
    for rel, path in files:
        with open(path, "rb") as f:
            data = f.read()
        s3.put_object(Bucket=bucket, Key=f"{key_prefix}/{rel}", Body=data)
        sent += len(data)
    s3.put_object(Bucket=bucket, Key=marker, Body=b"")
    return sent
