"""Build the serving Bento (always) and its container image (where an engine runs).

``build_image(model_dir, tag)`` stages a build context with ``serving/``, the ``mlcloud`` core
and, when given, the model (baked in as ``mlcloud_model/``), then runs ``bentoml build`` offline
(no package locking). Of the model only the manifest and the files it lists are copied, each a
regular file (a symlink anywhere in the model dir is refused: one once put a host file into the
Bento); the copy is then verified against the manifest, and the image's
``mlcloud.model-sha256`` label and default version are the digest of that copy. The image's
entrypoint is ``python -m serving.entrypoint``, which picks the cloud's serving contract from the
environment, so the one image is what SageMaker, Vertex AI and Azure ML all deploy.
Without a working container engine it says so and returns the exact commands to run elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mlcloud import modeldir
from mlcloud.errors import MlcloudError, SpecError
from serving.contracts import BUNDLED_MODEL

_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}(:[A-Za-z0-9_.-]{1,128})?$")
# bentoml pins itself; google-cloud-storage: Vertex prediction nodes have no /gcs mount, the
# entrypoint downloads the model from AIP_STORAGE_URI
_BASE_PACKAGES = ("fastapi", "numpy", "pydantic", "PyYAML", "google-cloud-storage")
_FRAMEWORK_PACKAGES = {
    "sklearn": ("scikit-learn", "skops", "joblib"),
    "onnx": ("onnxruntime",),
    "pytorch": ("torch",),
    "custom": (),
}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_DOCKERFILE_TEMPLATE = """\
{% extends bento_base_template %}
{% block SETUP_BENTO_ENTRYPOINT %}
{{ super() }}
ENV PYTHONPATH={{ bento__path }}/src
EXPOSE 8080 5001
ENTRYPOINT ["python", "-m", "serving.entrypoint"]
# The entrypoint starts as root and picks the user per contract (serving/entrypoint.py):
# SageMaker expects root; elsewhere it drops to bentoml when that user can read the model.
USER root
{% endblock %}
"""


class ImageBuildError(MlcloudError):
    """``bentoml build`` or the container build failed; the message carries its output."""


@dataclass(frozen=True)
class ImageResult:
    bento_tag: str
    image: str | None  # the container image reference, when one was built
    engine: str | None  # the container engine used
    message: str  # what happened, in a sentence or two
    commands: tuple[str, ...]  # how to build the image elsewhere (empty when built here)


def _pin(package: str, versions: Mapping[str, str]) -> str:
    # Pickle/skops formats need the exact library that wrote them: the version the model
    # recorded (a cloud training image's), else this machine's.
    version = versions.get(package)
    if version is None:
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return package
    return f"{package}=={version.split('+')[0]}"


def requirements(framework: str | None, versions: Mapping[str, str] | None = None) -> list[str]:
    """Pinned packages for one framework, or for every framework (a generic image);
    ``versions``: what the model's manifest recorded (``modeldir.library_versions``)."""
    frameworks = [framework] if framework else list(_FRAMEWORK_PACKAGES)
    names = [*_BASE_PACKAGES, *(p for f in frameworks for p in _FRAMEWORK_PACKAGES[f])]
    recorded = {k: v for k, v in (versions or {}).items() if k in names}
    return [_pin(name, recorded) for name in dict.fromkeys(names)]


def _stage(ctx: Path, model_dir: Path | None) -> tuple[dict[str, Any], str | None]:
    """Fill the build context; returns the model's manifest and digest as copied."""
    here = Path(__file__).resolve().parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(here, ctx / "serving", ignore=ignore)
    shutil.copytree(here.parent / "mlcloud", ctx / "mlcloud", ignore=ignore)
    (ctx / "Dockerfile.template").write_text(_DOCKERFILE_TEMPLATE, encoding="utf-8")
    if model_dir is None:
        return {}, None
    staged = ctx / BUNDLED_MODEL
    stage_model(model_dir, staged)
    return modeldir.verify(staged), modeldir.digest(staged)


def stage_model(model_dir: Path, dest: Path) -> None:
    """Copy the manifest and exactly the files it lists, as regular files, to ``dest``.

    ModelDirError for a symlink anywhere in ``model_dir`` and for a listed path that is not a
    regular file inside it. The copy is not verified here: verify ``dest``, which is what ships.
    """
    model_dir = Path(model_dir)
    _refuse_symlinks(model_dir)
    manifest = modeldir.read_manifest(model_dir)
    dest.mkdir(parents=True)
    for rel in [*manifest["files"], modeldir.MANIFEST]:
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
            raise modeldir.ModelDirError(
                f"{modeldir.MANIFEST} lists {rel!r}, which is outside the model dir"
            )
        target = dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_regular(model_dir.joinpath(*parts), target, rel)


def _refuse_symlinks(root: Path) -> None:
    for where, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(where) / name
            if path.is_symlink():
                raise modeldir.ModelDirError(
                    f"model dir {root} holds a symlink, {path.relative_to(root)} -> "
                    f"{os.readlink(path)}: an image gets regular files only",
                    hint="replace the link by the file itself (and rewrite the manifest)",
                )


def _copy_regular(src: Path, dest: Path, rel: str) -> None:
    """Copy one file, refusing anything but a regular file (O_NOFOLLOW: a link swapped in after
    the walk is refused too)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise modeldir.ModelDirError(f"model file {rel} is listed but missing") from None
    except OSError as exc:
        raise modeldir.ModelDirError(f"model file {rel} cannot be copied: {exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise modeldir.ModelDirError(f"model file {rel} is not a regular file")
    with os.fdopen(fd, "rb") as fin, open(dest, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def bentofile(
    name: str, framework: str | None, digest: str | None, versions: Mapping[str, str] | None = None
) -> dict[str, object]:
    versions = versions or {}
    packages = requirements(framework, versions)
    python: dict[str, object] = {"packages": packages, "lock_packages": False}
    if framework in (None, "pytorch"):
        python["extra_index_url"] = [TORCH_CPU_INDEX]  # the CPU wheel, not the CUDA one
    labels = {"mlcloud.model-sha256": digest} if digest else {}
    return {
        "service": "serving.service:MlcloudService",
        "name": name,
        "labels": {"mlcloud.framework": framework or "any", **labels},
        "include": ["serving/**", "mlcloud/**", f"{BUNDLED_MODEL}/**"],
        "exclude": ["**/__pycache__", "**/*.pyc"],
        "python": python,
        "docker": {
            "distro": "debian",
            # the Python that wrote the model (pickles), else this one
            "python_version": ".".join(
                versions.get("python", platform.python_version()).split(".")[:2]
            ),
            "dockerfile_template": "Dockerfile.template",
        },
    }


def _run(argv: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ImageBuildError(f"{' '.join(argv[:4])} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise ImageBuildError(f"{' '.join(argv[:4])} failed ({done.returncode}):\n{tail}")
    return done.stdout


def container_engine(timeout: float = 15) -> tuple[str | None, str]:
    """(engine, why): an engine whose daemon answers, or None and the reason."""
    reasons = []
    for engine in ("docker", "podman"):
        path = shutil.which(engine)
        if path is None:
            continue
        try:
            ok = subprocess.run(
                [path, "info"], capture_output=True, timeout=timeout, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            ok = 1
        if ok == 0:
            return engine, f"{engine} is running"
        reasons.append(f"{engine} is installed but its daemon does not answer")
    return None, "; ".join(reasons) or "no container engine (docker or podman) is installed"


def build_image(
    model_dir: Path | None,
    tag: str,
    *,
    containerize: bool = True,
    bentoml_home: Path | None = None,
    timeout: float = 900,
) -> ImageResult:
    """Build the Bento ``tag`` (``name[:version]``) serving ``model_dir`` (None: any model).

    The version defaults to the first 12 hex digits of the model digest, so rebuilding the same
    model gives the same tag. Raises SpecError for a bad tag, ModelDirError (a ModelError) for
    a bad model dir, ImageBuildError when a build step fails: all checked before building.
    """
    name, version = _check_tag(tag)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("MLCLOUD_SERVE_MODEL", None)  # the build must not pick up a model to serve
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    bento_tag = _build_bento(model_dir, name, version, env, timeout)
    image = f"{name}:{bento_tag.partition(':')[2]}"
    elsewhere = (
        f"bentoml export {bento_tag} {name}.bento",
        f"bentoml import {name}.bento && bentoml containerize {bento_tag} -t {image}",
    )
    if not containerize:
        return ImageResult(bento_tag, None, None, f"built Bento {bento_tag}", elsewhere)
    engine, why = container_engine()
    if engine is None:
        summary = (
            f"built Bento {bento_tag}; no container image: {why}. "
            "Build the image on a machine with a container engine:"
        )
        return ImageResult(bento_tag, None, None, summary, elsewhere)
    argv = [sys.executable, "-m", "bentoml", "containerize", bento_tag, "-t", image]
    _run([*argv, "--backend", engine], env, timeout)
    return ImageResult(bento_tag, image, engine, f"built Bento {bento_tag} and image {image}", ())


def _check_tag(tag: str) -> tuple[str, str]:
    """``(name, version)`` of a valid ``name[:version]`` tag; SpecError with a hint otherwise."""
    if not _TAG.match(tag):
        raise SpecError(
            f"image tag {tag!r} must be name[:version], name lowercase letters, digits, '-_.'",
            hint="e.g. --tag mlcloud-iris or --tag mlcloud-iris:v1",
        )
    name, _, version = tag.partition(":")
    if version == "latest":  # BentoML keeps a pointer file by that name next to the versions
        raise SpecError(
            "image tag version 'latest' is reserved by BentoML; omit the version",
            hint=f"--tag {name} (versioned by the model's digest) or --tag {name}:v1",
        )
    return name, version


def _build_bento(
    model_dir: Path | None, name: str, version: str, env: dict[str, str], timeout: float
) -> str:
    """``bentoml build`` in a staged context; returns the Bento's tag. The version defaults to
    the digest of the model as staged (what the Bento holds)."""
    with tempfile.TemporaryDirectory(prefix="mlcloud-bento-") as tmp:
        ctx = Path(tmp)
        manifest, digest = _stage(ctx, model_dir)
        version = version or (digest[:12] if digest else "")
        spec = bentofile(name, manifest.get("framework"), digest, manifest.get("versions"))
        # JSON is YAML: no dumper needed, and the file is exactly what we built.
        (ctx / "bentofile.yaml").write_text(json.dumps(spec, indent=2), encoding="utf-8")
        argv = [
            sys.executable,
            "-m",
            "bentoml",
            "build",
            str(ctx),
            "-f",
            str(ctx / "bentofile.yaml"),
        ]
        argv += ["--output", "tag", *(["--version", version] if version else [])]
        out = _run(argv, env, timeout, cwd=ctx)  # BentoML reads files only under the cwd
    found = re.search(r"__tag__:(\S+)", out)
    return found.group(1) if found else out.strip().splitlines()[-1]
