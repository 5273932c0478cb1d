"""Artifacts between providers: an upstream output a step's provider cannot read is copied.

Each provider reads its own store (``READS``): the local and Ray providers read paths on this
machine, SageMaker ``s3://``, Vertex ``gs://``. A step that reads an upstream output stored
elsewhere (a model trained on SageMaker, evaluated or served locally) gets a copy: the object
(or every object under the prefix) is streamed from its bucket into
``$MLCLOUD_HOME/artifacts/<sha256 of the URI and the objects' ETags>/``, a ``.tar.gz`` (the way
SageMaker packs a model) unpacked there. The key is content-addressed: an unchanged artifact is
not copied twice, and a changed one (new ETags) gets a new copy. A local copy is then what a
cloud provider stages like any local input (its own content-addressed upload), so every pair is
covered through this machine. The SDKs use their standard configuration (credentials, and
``AWS_ENDPOINT_URL`` / ``STORAGE_EMULATOR_HOST`` when set).

Not built: ``azureml://`` and Azure blob URIs (they need the workspace's datastore), which a step
is refused with the reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mlcloud.errors import UnsupportedFeature

READS: dict[str, tuple[str, ...]] = {
    "local": ("",),
    "ray": ("",),
    "sagemaker": ("s3",),
    "vertex": ("gs",),
    "azureml": ("azureml", "https"),
}
_DONE = ".mlcloud-copied"


def scheme(uri: str) -> str:
    """``s3``, ``gs``…; ``""`` for a path on this machine (``file://`` included)."""
    head, sep, _ = uri.partition("://")
    return "" if not sep or head == "file" else head


def readable(provider_type: str, uri: str) -> bool:
    """Whether a provider of this type reads ``uri`` where it is (unknown types: assume so)."""
    return scheme(uri) in READS.get(provider_type, (scheme(uri),))


def for_provider(provider_type: str, uri: str, home: Path) -> str:
    """``uri`` as ``provider_type`` can read it: as is, or a local copy (which a cloud provider
    then stages as it stages any local input)."""
    if readable(provider_type, uri) or scheme(uri) == "":
        return uri
    return str(localize(uri, home))


def remote_digest(uri: str) -> str | None:
    """A digest of what is stored at a bucket URI now (its objects' names and versions);
    None when nothing is there. What a data trigger on ``s3://`` / ``gs://`` compares."""
    objects = sorted((name, version) for name, version, _ in _listing(uri))
    if not objects:
        return None
    return hashlib.sha256("\n".join(f"{n}\0{v}" for n, v in objects).encode()).hexdigest()


def localize(uri: str, home: Path) -> Path:
    """A local copy of a remote artifact (a file, a ``.tar.gz`` unpacked, or a prefix)."""
    objects = list(_listing(uri))
    if not objects:
        raise UnsupportedFeature(f"copying {uri}: nothing is stored there", "pipelines")
    key = hashlib.sha256("\n".join([uri, *(f"{n}\0{e}" for n, e, _ in objects)]).encode())
    target = home / "artifacts" / key.hexdigest()
    if (target / _DONE).exists():
        return _entry(target)
    part = target.with_name(f"{target.name}.part-{os.getpid()}")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True, mode=0o700)
    for relative, _, write in objects:
        dest = part / relative if relative else part / Path(uri.rstrip("/")).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as out:
            write(out)  # streamed to the file, never whole in memory
        if dest.name.endswith((".tar.gz", ".tgz")) and len(objects) == 1:
            with tarfile.open(dest) as archive:
                archive.extractall(part, filter="data")  # no paths outside, no devices
            dest.unlink()
    (part / _DONE).write_text(uri)
    try:
        part.rename(target)
    except OSError:  # another process made the same copy meanwhile: keep theirs
        shutil.rmtree(part, ignore_errors=True)
    return _entry(target)


def _entry(target: Path) -> Path:
    """The copy: its one file, else the directory."""
    files = [p for p in target.iterdir() if p.name != _DONE]
    return files[0] if len(files) == 1 and files[0].is_file() else target


# (path under the prefix, its version (ETag, generation), write it into an open file)
Listing = Iterator[tuple[str, str, Callable[[BinaryIO], None]]]


def _listing(uri: str) -> Listing:
    kind = scheme(uri)
    bucket, _, name = uri.split("://", 1)[1].partition("/")
    if kind == "s3":
        return _s3(bucket, name)
    if kind == "gs":
        return _gcs(bucket, name)
    raise UnsupportedFeature(
        f"copying {uri} between providers",
        "pipelines",
        hint="run the steps that read it on the provider that wrote it",
    )


def _s3(bucket: str, key: str) -> Listing:
    import boto3

    s3 = boto3.client("s3")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    for page in pages:
        for item in page.get("Contents", []):
            name = str(item["Key"])
            relative = "" if name == key else name[len(key) :].lstrip("/")
            if name != key and not key.endswith("/") and not name.startswith(key + "/"):
                continue  # s3://b/model matches s3://b/model-2 by prefix only

            def write(out: BinaryIO, name: str = name) -> None:
                body = s3.get_object(Bucket=bucket, Key=name)["Body"]
                for chunk in body.iter_chunks(1 << 20):
                    out.write(chunk)

            yield relative, str(item.get("ETag")), write


def _gcs(bucket: str, name: str) -> Listing:
    from google.cloud.storage import Client  # the package ships no type information

    client = Client()
    for blob in client.list_blobs(bucket, prefix=name):
        if blob.name != name and not name.endswith("/") and not blob.name.startswith(name + "/"):
            continue
        relative = "" if blob.name == name else blob.name[len(name) :].lstrip("/")

        def write(out: BinaryIO, blob: Any = blob) -> None:
            blob.download_to_file(out)

        yield relative, f"{blob.generation}:{blob.etag or blob.md5_hash}", write
