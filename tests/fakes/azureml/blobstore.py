"""The fake blob store's versions: each blob's ETag follows its content, as Azure's changes on
every write, in List Blobs and on a read. What a data trigger on an ``azureml://`` URI digests
(no download), and what keys a copy of an artifact."""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

MODIFIED = "Thu, 01 Jan 2026 00:00:00 GMT"


def etag(data: bytes) -> str:
    """A strong ETag of the content (Azure's are opaque ``"0x8D..."`` strings)."""
    return f'"0x{hashlib.sha256(data).hexdigest()[:16].upper()}"'


def versioned(data: bytes) -> dict[str, str]:
    """The version headers of a blob read (Get Blob, Get Blob Properties)."""
    return {"ETag": etag(data), "Last-Modified": MODIFIED}


def blob_list(blobs: dict[str, bytes], container: str, query: dict[str, str]) -> bytes:
    """List Blobs' XML: the blobs of ``container`` under ``prefix``, with their properties."""
    prefix = query.get("prefix", "")
    names = sorted(
        k.split("/", 1)[1]
        for k in blobs
        if k.startswith(container + "/") and k.split("/", 1)[1].startswith(prefix)
    )
    items = "".join(
        f"<Blob><Name>{escape(n)}</Name><Properties><Last-Modified>{MODIFIED}</Last-Modified>"
        f"<Etag>{etag(blobs[container + '/' + n])}</Etag>"
        f"<Content-Length>{len(blobs[container + '/' + n])}</Content-Length>"
        "<BlobType>BlockBlob</BlobType></Properties></Blob>"
        for n in names
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>'
        f"{items}</Blobs><NextMarker /></EnumerationResults>"
    ).encode()
