"""Container entrypoint: start the service the way this platform's contract expects.

``python -m serving.entrypoint [serve]``. SageMaker runs ``docker run IMAGE serve`` and sets no
variable of its own, so ``serve`` selects the SageMaker contract unless another platform's
variables (or ``MLCLOUD_SERVING_CONTRACT``) say otherwise. Resolves the contract, fetches a
``gs://`` model (Vertex prediction nodes have no /gcs mount), picks the user to run as, then execs
``bentoml serve`` on the contract's port. Inside a container the platform connects from outside,
so the host defaults to 0.0.0.0 here (and only here); ``MLCLOUD_SERVE_HOST`` overrides it.

Users: the image starts as root. SageMaker documents that it expects root and mounts
``/opt/ml/model`` as root-owned files extracted from model.tar.gz (modes as archived, 0600 is
common), so that contract keeps root. Every other contract drops to the unprivileged ``bentoml``
user when it can read the whole model (Vertex: the files it just downloaded; Azure ML: a
world-readable mount) and otherwise stays root, saying why: refusing would leave the endpoint
never healthy for a permission the platform chose.
"""

from __future__ import annotations

import os
import pwd
import stat
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from mlcloud import modeldir
from mlcloud.errors import MlcloudError
from serving.contracts import ENV_CONTRACT, ENV_MODEL, Contract, locate_model_dir, resolve

DEFAULT_PORT = 3000
SERVICE = "serving.service:MlcloudService"
SERVE_USER = "bentoml"
ENV_DOWNLOAD_DIR = "MLCLOUD_SERVE_DOWNLOAD_DIR"
MAX_MODEL_FILES = 10_000


def command(env: Mapping[str, str], *, serve_arg: bool = False) -> list[str]:
    """The ``bentoml serve`` argv for this environment."""
    contract = resolve(env, serve_arg=serve_arg)
    port = contract.port or int(env.get("BENTOML_PORT") or DEFAULT_PORT)
    host = env.get("MLCLOUD_SERVE_HOST", "0.0.0.0")  # noqa: S104 - container: reached from outside
    target = env.get("BENTO_PATH") or SERVICE
    return ["bentoml", "serve", target, "--host", host, "--port", str(port)]


def download_gcs(uri: str, dest: Path) -> Path:
    """Copy every object under ``gs://bucket/prefix`` into ``dest`` and verify the sha256 of
    each file against the manifest; returns the model dir (``dest`` or one level down)."""
    try:
        from google.api_core.exceptions import GoogleAPIError
        from google.cloud.storage import Client  # the gcp extra; in every serving image
    except ImportError as e:
        raise modeldir.ModelDirError(f"cannot download {uri}: {e}") from None
    try:
        return _download(Client(), uri, dest)
    except GoogleAPIError as e:
        raise modeldir.ModelDirError(f"cannot download {uri}: {e}") from None


def _download(client: Any, uri: str, dest: Path) -> Path:
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    count = 0
    for blob in client.list_blobs(bucket, prefix=prefix):
        rel = blob.name[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # "folder" placeholder objects
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts:
            raise modeldir.ModelDirError(f"{uri}: refusing object name {blob.name!r}")
        count += 1
        if count > MAX_MODEL_FILES:
            raise modeldir.ModelDirError(f"{uri} holds more than {MAX_MODEL_FILES} objects")
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))
    if count == 0:
        raise modeldir.ModelDirError(f"{uri} holds no objects (is AIP_STORAGE_URI right?)")
    root = locate_model_dir(dest)
    modeldir.verify(root)  # every listed file's sha256, before anything is loaded
    return root


def readable_by(root: Path, uid: int, gids: set[int]) -> bool:
    """Whether ``uid`` (with groups ``gids``) can read every file under ``root`` by its modes."""

    def can(st: os.stat_result, want: int) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & (want << 6))
        if st.st_gid in gids:
            return bool(st.st_mode & (want << 3))
        return bool(st.st_mode & want)

    for path in (root, *root.rglob("*")):
        st = path.stat()
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else 0)
        if not can(st, need):
            return False
    return True


def serve_user(
    contract: Contract, model: Path | None, *, ours: bool = False
) -> tuple[pwd.struct_passwd | None, str]:
    """The user to drop to (None: stay) and why, for a process that runs as root. ``ours``:
    the entrypoint downloaded the model itself (it hands the files over when it drops)."""
    if os.geteuid() != 0:
        return None, "not root"
    if contract.name == "sagemaker":
        return None, "SageMaker expects root and mounts /opt/ml/model as root"
    try:
        user = pwd.getpwnam(SERVE_USER)
    except KeyError:
        return None, f"no {SERVE_USER} user in this image"
    groups = {user.pw_gid, *(g for g in os.getgrouplist(user.pw_name, user.pw_gid))}
    mounted = model is not None and model.exists() and not ours
    if mounted and model is not None and not readable_by(model, user.pw_uid, groups):
        return None, f"{model} is not readable by {SERVE_USER}; serving as root"
    return user, f"serving as {SERVE_USER}"


def prepare(env: dict[str, str], *, serve_arg: bool) -> tuple[list[str], Contract, Path | None]:
    """Resolve the contract, fetch a gs:// model; fixes ``env`` for the server process."""
    contract = resolve(env, serve_arg=serve_arg)
    env[ENV_CONTRACT] = contract.name  # the server's own resolve must agree (``serve``)
    model = contract.model_dir
    if contract.model_uri is not None:
        base = env.get(ENV_DOWNLOAD_DIR) or tempfile.mkdtemp(prefix="mlcloud-model-")
        env[ENV_DOWNLOAD_DIR] = base  # what ``main`` hands over to the serving user
        model = download_gcs(contract.model_uri, Path(base))
        env[ENV_MODEL] = str(model)
        print(f"mlcloud serving: downloaded {contract.model_uri} to {model}", flush=True)
    return command(env, serve_arg=serve_arg), contract, model


def _drop(user: pwd.struct_passwd, downloaded: Path | None, env: dict[str, str]) -> None:
    if downloaded is not None:
        # What we downloaded as root: the model's tree, and every directory from the download
        # dir down to it (a model one level down sits in mkdtemp's 0700 dir, closed to others).
        base = Path(env.get(ENV_DOWNLOAD_DIR) or downloaded)
        above = (p for p in downloaded.parents if p.is_relative_to(base))
        for path in (*above, downloaded, *downloaded.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
    os.initgroups(user.pw_name, user.pw_gid)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    env["HOME"] = user.pw_dir


def main(argv: list[str]) -> None:
    args = [a for a in argv if a != "serve"]
    if args:
        sys.exit(f"usage: python -m serving.entrypoint [serve] (got {' '.join(args)})")
    env = dict(os.environ)
    try:
        cmd, contract, model = prepare(env, serve_arg="serve" in argv)
    except MlcloudError as e:  # a bad environment or model: one line in the platform's log
        sys.exit(f"mlcloud serving: error: {e}" + (f" (hint: {e.hint})" if e.hint else ""))
    ours = contract.model_uri is not None
    user, why = serve_user(contract, model, ours=ours)
    if user is not None:
        _drop(user, model if ours else None, env)
    print(f"mlcloud serving: {contract.name} contract, {why}: " + " ".join(cmd), flush=True)
    os.execvpe(cmd[0], cmd, env)  # noqa: S606 - fixed argv, the container becomes the server


if __name__ == "__main__":
    main(sys.argv[1:])
