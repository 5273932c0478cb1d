"""A Cloud Storage JSON-API fake on 127.0.0.1 for a serving container's model download.

The Vertex fake's ``Storage`` (uploads, object metadata, media downloads) plus the object
listing (``GET /storage/v1/b/{bucket}/o?prefix=…``) that copying a model directory needs. Point
google-cloud-storage at it the way the emulator convention says: ``STORAGE_EMULATOR_HOST=url``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.fakes.vertex.server import Blob, Request, Response, Server, Storage, _json


class ListingStorage(Storage):
    def handle(self, req: Request) -> Response | None:
        bucket = req.path.removeprefix("/storage/v1/b/").removesuffix("/o")
        if req.method == "GET" and req.path == f"/storage/v1/b/{bucket}/o" and "/" not in bucket:
            prefix = req.query.get("prefix", "")
            items = [
                self.meta(b, name, blob)
                for (b, name), blob in sorted(self.blobs.items())
                if b == bucket and name.startswith(prefix)
            ]
            return _json({"kind": "storage#objects", "items": items})
        return super().handle(req)

    def put_tree(self, bucket: str, prefix: str, root: Path) -> str:
        """Upload every file under ``root`` to ``gs://bucket/prefix/…``; returns that URI."""
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self._generation += 1
            name = f"{prefix}/{path.relative_to(root).as_posix()}"
            self.blobs[(bucket, name)] = Blob(
                path.read_bytes(), self._generation, "application/octet-stream"
            )
        return f"gs://{bucket}/{prefix}"


class FakeGcs:
    def __init__(self) -> None:
        self.storage = ListingStorage()
        self.server = Server([self.storage])

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeGcs:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


@contextmanager
def running() -> Iterator[FakeGcs]:
    fake = FakeGcs().start()
    try:
        yield fake
    finally:
        fake.stop()
