"""Build the serving Bento (always) and its container image (where an engine runs).

``build_image(model_dir, tag)`` stages a build context with ``serving/``, the ``mlcloud`` core
and, when given, the model (baked in as ``mlcloud_model/``, verified first), then runs
``bentoml build`` offline (no package locking). The image's entrypoint is
``python -m serving.entrypoint``, which picks the cloud's serving contract from the
environment, so the one image is what SageMaker, Vertex AI and Azure ML all deploy.
Without a working container engine it says so and returns the exact commands to run elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlcloud import modeldir
from mlcloud.errors import MlcloudError, SpecError
from serving.contracts import BUNDLED_MODEL

_TAG = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}(:[A-Za-z0-9_.-]{1,128})?$")
_BASE_PACKAGES = ("fastapi", "numpy", "pydantic", "PyYAML")  # bentoml pins itself
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


def _pin(package: str) -> str:
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return package
    # Pickle/skops formats need the exact library that wrote them.
    return f"{package}=={version.split('+')[0]}"


def requirements(framework: str | None) -> list[str]:
    """Pinned packages for one framework, or for every framework (a generic image)."""
    frameworks = [framework] if framework else list(_FRAMEWORK_PACKAGES)
    names = [*_BASE_PACKAGES, *(p for f in frameworks for p in _FRAMEWORK_PACKAGES[f])]
    return [_pin(name) for name in dict.fromkeys(names)]


def _stage(ctx: Path, model_dir: Path | None) -> None:
    here = Path(__file__).resolve().parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(here, ctx / "serving", ignore=ignore)
    shutil.copytree(here.parent / "mlcloud", ctx / "mlcloud", ignore=ignore)
    if model_dir is not None:
        shutil.copytree(model_dir, ctx / BUNDLED_MODEL, ignore=ignore)
    (ctx / "Dockerfile.template").write_text(_DOCKERFILE_TEMPLATE, encoding="utf-8")


def bentofile(name: str, framework: str | None, digest: str | None) -> dict[str, object]:
    python: dict[str, object] = {"packages": requirements(framework), "lock_packages": False}
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
            "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
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
    framework = digest = None
    if model_dir is not None:
        model_dir = Path(model_dir).resolve()
        framework = modeldir.verify(model_dir)["framework"]
        digest = modeldir.digest(model_dir)
    version = version or (digest[:12] if digest else "")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("MLCLOUD_SERVE_MODEL", None)  # the build must not pick up a model to serve
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    bento_tag = _build_bento(model_dir, name, version, framework, digest, env, timeout)
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
    model_dir: Path | None,
    name: str,
    version: str,
    framework: str | None,
    digest: str | None,
    env: dict[str, str],
    timeout: float,
) -> str:
    """``bentoml build`` in a staged context; returns the Bento's tag."""
    with tempfile.TemporaryDirectory(prefix="mlcloud-bento-") as tmp:
        ctx = Path(tmp)
        _stage(ctx, model_dir)
        spec = bentofile(name, framework, digest)
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
