"""Content-addressed staging in Cloud Storage: an object is uploaded only when it is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlcloud.errors import Conflict
from providers.vertex.errors import mapped, read_retry

MARKER = ".mlcloud-complete"  # written last, so its presence means the whole prefix is there


def exists(bucket: Any, key: str) -> bool:
    with mapped(f"checking gs://{bucket.name}/{key}"):
        return bool(bucket.blob(key).exists(retry=read_retry()))


def put_if_absent(bucket: Any, key: str, data: bytes, content_type: str | None = None) -> int:
    """Upload ``data`` unless the object exists; returns the bytes sent (0 when it was there)."""
    from google.api_core import exceptions as gexc

    if exists(bucket, key):
        return 0
    blob = bucket.blob(key)
    try:
        with mapped(f"uploading gs://{bucket.name}/{key}"):
            # if_generation_match=0: create-only, so a concurrent identical upload is harmless
            blob.upload_from_string(
                data, content_type=content_type or "application/octet-stream", if_generation_match=0
            )
    except Conflict as err:
        if isinstance(err.__cause__, gexc.PreconditionFailed):
            return 0  # someone uploaded it meanwhile: same key, same content
        raise
    return len(data)


def put_files_if_absent(bucket: Any, files: list[tuple[str, str]], prefix: str) -> int:
    """Upload ``(local path, key)`` pairs of one content-hashed ``prefix``; marker-guarded."""
    marker = f"{prefix}/{MARKER}"
    if exists(bucket, marker):
        return 0
    sent = sum(put_if_absent(bucket, key, Path(path).read_bytes()) for path, key in files)
    put_if_absent(bucket, marker, b"", content_type="text/plain")
    return sent
