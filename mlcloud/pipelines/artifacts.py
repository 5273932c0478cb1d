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

An ``azureml://`` URI names a datastore of a workspace: only an Azure ML profile resolves it
(to its blob container), so it is listed and streamed through that provider's
``list_objects`` / ``download_object`` (see :func:`store_provider` for which profile). Copying
*into* a store is the step's provider's own staging of a local input (Azure ML uploads it to
the workspace's datastore at submit). Other schemes (an Azure blob ``https://`` URL) are
refused with the reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from mlcloud import registry
from mlcloud.config import load_config
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.store import Store

if TYPE_CHECKING:
    from mlcloud.provider import Provider

READS: dict[str, tuple[str, ...]] = {
    "local": ("",),
    "ray": ("",),
    "sagemaker": ("s3",),
    "vertex": ("gs",),
    "azureml": ("azureml", "https"),
}
#: schemes only a provider resolves (the workspace's datastores): scheme -> provider type
PROVIDER_STORES: dict[str, str] = {"azureml": "azureml"}
#: what a data trigger watches (anything else remote is digested as its URI: never changes)
WATCHED = ("s3", "gs", *PROVIDER_STORES)
_DONE = ".mlcloud-copied"
# ``profiles``, below: the profiles the pipeline uses, in order; the first of a store's
# provider type reads that store's URIs (see store_provider).


def scheme(uri: str) -> str:
    """``s3``, ``gs``…; ``""`` for a path on this machine (``file://`` included)."""
    head, sep, _ = uri.partition("://")
    return "" if not sep or head == "file" else head


def readable(provider_type: str, uri: str) -> bool:
    """Whether a provider of this type reads ``uri`` where it is (unknown types: assume so)."""
    return scheme(uri) in READS.get(provider_type, (scheme(uri),))


def for_provider(
    provider_type: str, uri: str, home: Path, profiles: Sequence[str | None] = ()
) -> str:
    """``uri`` as ``provider_type`` can read it: as is, or a local copy (which a cloud provider
    then stages as it stages any local input)."""
    if readable(provider_type, uri) or scheme(uri) == "":
        return uri
    return str(localize(uri, home, profiles))


def remote_digest(uri: str, profiles: Sequence[str | None] = ()) -> str | None:
    """A digest of what is stored at a bucket or datastore URI now (its objects' names and
    versions: nothing is downloaded); None when nothing is there. What a data trigger on
    ``s3://`` / ``gs://`` / ``azureml://`` compares."""
    objects = sorted((name, version) for name, version, _ in _listing(uri, profiles))
    if not objects:
        return None
    return hashlib.sha256("\n".join(f"{n}\0{v}" for n, v in objects).encode()).hexdigest()


def localize(uri: str, home: Path, profiles: Sequence[str | None] = ()) -> Path:
    """A local copy of a remote artifact (a file, a ``.tar.gz`` unpacked, or a prefix)."""
    objects = list(_listing(uri, profiles))
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


def _listing(uri: str, profiles: Sequence[str | None] = ()) -> Listing:
    kind = scheme(uri)
    bucket, _, name = uri.split("://", 1)[1].partition("/")
    if kind == "s3":
        return _s3(bucket, name)
    if kind == "gs":
        return _gcs(bucket, name)
    if kind in PROVIDER_STORES:
        return _through(store_provider(uri, profiles), uri)
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


def store_provider(uri: str, profiles: Sequence[str | None] = ()) -> Provider[Any]:
    """The provider that reads ``uri`` (a scheme of :data:`PROVIDER_STORES`): the first of
    ``profiles`` of its type, else the default profile if of that type, else the one profile
    of that type configured. (Its store is closed: reading storage never touches it.)"""
    kind = PROVIDER_STORES[scheme(uri)]
    config = load_config()
    configured = [p for p in config.profiles.values() if p.type == kind]
    named = (config.resolve(n) for n in (*profiles, None))  # a bare type name has no settings
    chosen = [p for p in named if p.type == kind and p.name in config.profiles]
    if not chosen and len(configured) > 1:
        names = ", ".join(sorted(p.name for p in configured))
        raise SpecError(
            f"reading {uri}: which {kind} profile? {names} are configured",
            hint="name one as the pipeline's (or a step's) provider",
        )
    profile = chosen[0] if chosen else configured[0] if configured else None
    if profile is None:
        raise SpecError(
            f"reading {uri} needs a profile of type {kind} (its workspace, its credential)",
            hint=f"add a `type: {kind}` profile to mlcloud.yaml",
        )
    with Store.borrowed(None) as store:
        return registry.get_provider(profile, store)


def _through(provider: Provider[Any], uri: str) -> Listing:
    for item in provider.list_objects(uri):

        def write(out: BinaryIO, path: str = item.path) -> None:
            provider.download_object(uri, path, out)

        yield item.path, item.version, write
