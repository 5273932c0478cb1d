"""Content digests of a job's inputs, for lineage (the registry now, pipelines' caching later).

Standard library only. A local file or directory gets a sha256 over its content (a directory:
over each file's relative path and sha256, sorted, so a renamed or changed file changes it); a
remote URI cannot be read here, so it stands for itself (``uri:<the URI>``) — the bucket's own
versioning is what pins it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's (relative path, file sha256) list."""
    if path.is_file():
        return _file_sha256(path)
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = Path(folder, name)
            rel = full.relative_to(path).as_posix()
            h.update(f"{rel}\0{_file_sha256(full)}\n".encode())
    return h.hexdigest()


def digest(uri: str) -> dict[str, Any]:
    """``{"uri", "digest", "kind"}`` for one input: kind ``file``/``dir`` (content digest),
    ``remote`` (the URI itself) or ``missing`` (a local path that is gone: no digest)."""
    if is_remote(uri):
        return {"uri": uri, "digest": f"uri:{uri}", "kind": "remote"}
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        return {"uri": uri, "digest": None, "kind": "missing"}
    kind = "file" if path.is_file() else "dir"
    return {"uri": uri, "digest": content_digest(path), "kind": kind}


def digests(inputs: dict[str, str]) -> dict[str, dict[str, Any]]:
    """:func:`digest` of each named input."""
    return {name: digest(uri) for name, uri in sorted(inputs.items())}
