"""The mlcloud model directory: artifacts plus ``mlcloud-model.yaml``.

The manifest records the framework, how to load the entry artifact, an optional input
signature/example, the job that made it, and the sha256 of every file. Loaders (in
``serving/``) refuse a directory whose files do not match, so a tampered artifact is never
deserialised. The manifest is written as JSON, which is valid YAML, keeping this module
standard-library only (cloud launchers ship it inside job archives, with ``mlcloud/errors.py``).
Every problem is a :class:`ModelDirError`, an ``mlcloud.errors.ModelError``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from mlcloud.errors import ModelError

MANIFEST = "mlcloud-model.yaml"
FORMAT_VERSION = 1
FRAMEWORKS = ("sklearn", "pytorch", "onnx", "custom")
# Element types a signature may name (numpy spellings; loaders map them onto the framework).
DTYPES = ("float32", "float64", "int32", "int64", "bool", "string")
#: The serving container's trust in the model's code (README, Security): the model digest that
#: may run code when loaded, or :data:`TRUST_ANY`; unset or empty: no code runs.
TRUST_ENV = "MLCLOUD_TRUSTED_MODEL"
TRUST_ANY = "*"
UNTRUSTED_HINT = (
    "deploy the job that made it (mlcloud deploy <job-id>), or add --trust-code if you trust "
    "whoever wrote this directory; safer still, save the model as skops, ONNX or TorchScript"
)
# Types skops reports as "untrusted" that we accept anyway: plain sklearn/numpy internals that
# common estimators (trees, forests, boosting) are made of. Anything else refuses to load.
SKOPS_TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn._loss.link.IdentityLink",
        "sklearn._loss.link.LogLink",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss.loss.HalfSquaredError",
        "sklearn._loss.loss.HalfPoissonLoss",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss._loss.CyHalfMultinomialLoss",
        "sklearn._loss._loss.CyHalfSquaredError",
        "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "numpy.dtype",
        "numpy.float64",
        "numpy.int64",
    }
)


class ModelDirError(ModelError):
    """A model directory is missing, malformed or does not match its manifest, or a model
    cannot be saved as one (unknown framework, missing option, bad signature)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_tree(root: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts:
            files[path.relative_to(root).as_posix()] = sha256_file(path)
    return files


def write_manifest(
    root: Path,
    framework: str,
    entry: dict[str, Any],
    *,
    signature: dict[str, Any] | None = None,
    example: Any = None,
    created_by: str | None = None,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Hash every file under ``root`` and write the manifest. Returns it."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "framework": framework,
        "entry": entry,
        "signature": signature,
        "example": example,
        "created_by": created_by,
        "versions": versions,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": _hash_tree(root),
    }
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    return manifest


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{root} is not an mlcloud model directory (no {MANIFEST})")
    try:
        import yaml  # a hand-edited manifest may be real YAML

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except ImportError:
        data = json.loads(path.read_text(encoding="utf-8"))
    except Exception as e:
        raise ModelDirError(f"{path} cannot be parsed: {e}") from None
    if not isinstance(data, dict) or data.get("framework") not in FRAMEWORKS:
        raise ModelDirError(f"{path}: 'framework' must be one of {', '.join(FRAMEWORKS)}")
    if not isinstance(data.get("files"), dict) or not isinstance(data.get("entry"), dict):
        raise ModelDirError(f"{path}: 'files' and 'entry' must be mappings")
    if data.get("signature") is not None:
        try:
            check_signature(data["signature"])
        except ModelDirError as e:
            raise ModelDirError(f"{path}: {e}") from None
    return data


def check_signature(signature: Any) -> None:
    """Raise ModelDirError unless ``signature`` is ``{"inputs": {"shape": [...], "dtype": ...}}``.

    ``shape`` lists the dimensions of the whole input batch, ``-1`` where any size is fine
    (normally the first, batch, dimension); ``outputs`` may be given in the same form.
    """
    if not isinstance(signature, dict) or not isinstance(signature.get("inputs"), dict):
        raise ModelDirError("'signature' must be a mapping with an 'inputs' mapping")
    for part in ("inputs", "outputs"):
        spec = signature.get(part)
        if spec is None:
            continue
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if shape is not None and (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and (d == -1 or d > 0) for d in shape)
        ):
            raise ModelDirError(f"signature {part}.shape must be a list of positive ints or -1")
        dtype = spec.get("dtype") if isinstance(spec, dict) else None
        if dtype is not None and dtype not in DTYPES:
            raise ModelDirError(f"signature {part}.dtype must be one of {', '.join(DTYPES)}")


def infer_signature(example: Any) -> dict[str, Any] | None:
    """A signature from an example batch (a list of rows), or None when it has no fixed shape."""
    if not isinstance(example, list) or not example:
        return None
    shape: list[int] = [-1]
    row: Any = example[0]
    while isinstance(row, list):
        if not row:
            return None
        shape.append(len(row))
        row = row[0]
    dtype = {bool: "bool", int: "int64", float: "float64", str: "string"}.get(type(row))
    if dtype is None:
        return None
    return {"inputs": {"shape": shape, "dtype": dtype}}


def verify(root: Path) -> dict[str, Any]:
    """Read the manifest and check every listed file's sha256; raise ModelDirError if not."""
    manifest = read_manifest(root)
    entry_file = manifest["entry"].get("file")
    if entry_file is not None and entry_file not in manifest["files"]:
        raise ModelDirError(f"entry file {entry_file!r} is not listed with a sha256 in {MANIFEST}")
    for rel, expected in manifest["files"].items():
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise ModelDirError(f"{MANIFEST} lists {rel!r}, which is outside the model dir")
        if not target.is_file():
            raise ModelDirError(f"model file {rel} is listed in {MANIFEST} but missing")
        actual = sha256_file(target)
        if actual != expected:
            raise ModelDirError(
                f"model file {rel} does not match {MANIFEST} (sha256 {actual[:12]}…, "
                f"expected {expected[:12]}…): refusing to load a modified artifact"
            )
    return manifest


def digest(root: Path) -> str:
    """One sha256 for the whole model dir: over the manifest's file hashes and what the
    manifest says to run (framework and entry), so a grant of trust pinned to a digest cannot
    be redirected to another listed module or format by editing the manifest."""
    return manifest_digest(read_manifest(root))


def manifest_digest(manifest: dict[str, Any]) -> str:
    what = {k: manifest.get(k) for k in ("framework", "entry", "files")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


# ---- trust: which models may run code when loaded ----------------------------------------------
def runs_code(manifest: dict[str, Any]) -> str | None:
    """Why loading this model runs code that came with it (``None``: it does not).

    A pickle (joblib) runs whatever its bytes say; a torch module class and a custom predictor
    are imported. skops (with mlcloud's type allow-list), ONNX and TorchScript load as data."""
    entry, framework = manifest.get("entry") or {}, manifest.get("framework")
    if framework == "sklearn":
        fmt = entry.get("format") or ("skops" if str(entry.get("file", "")).endswith(".skops")
                                      else "joblib")  # fmt: skip
        return None if fmt == "skops" else f"a pickle file ({entry.get('file')}, {fmt})"
    if framework == "pytorch" and entry.get("format") != "torchscript":
        return f"a torch module class ({entry.get('class')!r})"
    if framework == "custom":
        return f"a custom predictor ({entry.get('predictor')!r})"
    return None


def check_trust(root: Path, manifest: dict[str, Any], trust: str | None) -> None:
    """Raise ModelDirError unless the model runs no code, or ``trust`` (the value of
    :data:`TRUST_ENV`) grants it: :data:`TRUST_ANY`, or this very model's digest."""
    reason = runs_code(manifest)
    if reason is None or trust == TRUST_ANY:
        return
    if not trust:
        raise ModelDirError(
            f"{root} runs code when loaded ({reason}) and nothing says to trust it",
            hint=UNTRUSTED_HINT,
        )
    actual = manifest_digest(manifest)
    if actual != trust:
        raise ModelDirError(
            f"{root} runs code when loaded ({reason}) and is not the model mlcloud trusted "
            f"(digest {actual[:12]}…, trusted {trust[:12]}…): refusing to load it",
            hint=UNTRUSTED_HINT,
        )


# ---- collecting a job's model ------------------------------------------------------------------
def collect(root: Path) -> dict[str, str]:
    """What mlcloud records about a job's model dir when the job has succeeded (``{}`` when the
    job wrote none, or one that fails its manifest): ``model_sha256``, the digest a later deploy
    must match to be trusted, taken after a scikit-learn pickle is converted to skops where
    skops can hold it (then the model loads as data, and ``model_converted`` says so)."""
    try:
        if not (root / MANIFEST).is_file():
            return {}
        manifest = verify(root)
    except (ModelDirError, OSError):
        return {}
    outputs: dict[str, str] = {}
    if _pickle_to_skops(root, manifest):
        outputs["model_converted"] = "joblib -> skops"
    outputs["model_sha256"] = digest(root)
    return outputs


def _pickle_to_skops(root: Path, manifest: dict[str, Any]) -> bool:
    """Rewrite a job's joblib scikit-learn model as ``model.skops`` when every type in it is
    one the loaders accept; ``False`` (nothing changed) otherwise. The pickle is the job's own
    output, read right after the job (the user's code) wrote it."""
    entry = manifest["entry"]
    if manifest["framework"] != "sklearn" or runs_code(manifest) is None:
        return False
    try:
        import joblib
        import skops.io as sio
    except ImportError:
        return False
    source, target = root / str(entry.get("file")), root / "model.skops"
    if target.exists():
        return False
    try:
        model = joblib.load(source)
        sio.dump(model, target)
        untrusted = sio.get_untrusted_types(file=target)
        if set(untrusted) - SKOPS_TRUSTED_TYPES:
            raise ValueError("types outside the allow-list")
        sio.load(target, trusted=untrusted)  # it reads back
    except Exception:  # anything skops cannot hold: keep the pickle, trusted by digest
        target.unlink(missing_ok=True)
        return False
    source.unlink()
    write_manifest(
        root,
        "sklearn",
        {**entry, "file": target.name, "format": "skops"},
        signature=manifest.get("signature"),
        example=manifest.get("example"),
        created_by=manifest.get("created_by"),
    )
    return True


def save(
    obj: Any,
    framework: str,
    root: Path,
    *,
    created_by: str | None = None,
    signature: dict[str, Any] | None = None,
    example: Any = None,
    **options: Any,
) -> Path:
    """Write ``obj`` under ``root`` for ``framework``; see the per-framework notes below.

    * ``sklearn``: any estimator; saved with skops when installed, else joblib (loaders only
      unpickle a joblib file whose sha256 matches this manifest).
    * ``pytorch``: a ``torch.jit.ScriptModule`` (TorchScript), or an ``nn.Module`` with
      ``module_class="pkg.module:Class"`` (and optional ``init_kwargs``) saved as a state dict.
    * ``onnx``: ONNX bytes or a path to a ``.onnx`` file.
    * ``custom``: ``obj`` is a directory to copy in; ``predictor="module:Class"`` names a class
      in it with ``predict(self, inputs)``.
    """
    if framework not in FRAMEWORKS:
        raise ModelDirError(f"framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    if signature is None and example is not None:
        signature = infer_signature(example)
    if signature is None and framework == "sklearn":
        signature = _sklearn_signature(obj)
    if signature is not None:
        check_signature(signature)
    root.mkdir(parents=True, exist_ok=True)
    entry = _SAVERS[framework](obj, root, options)
    write_manifest(
        root,
        framework,
        entry,
        signature=signature,
        example=example,
        created_by=created_by,
        versions=library_versions(framework, entry),
    )
    return root


# ---- library versions -----------------------------------------------------------------------
# The packages that wrote each framework's artifact. Cloud training images carry their own
# (SageMaker's sklearn 1.4-2 image: scikit-learn 1.4.2), so the model records them, the serving
# image pins them, and loading checks them (check_versions).
VERSIONED_PACKAGES = {
    "sklearn": ("numpy", "scikit-learn", "scipy"),
    "pytorch": ("numpy", "torch"),
    "onnx": ("numpy", "onnx", "onnxruntime"),
    "custom": ("numpy",),
}
# The package whose major version must match to load at all (a pickle/format boundary).
FRAMEWORK_PACKAGE = {"sklearn": "scikit-learn", "pytorch": "torch", "onnx": "onnxruntime"}


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(framework: str, entry: dict[str, Any]) -> dict[str, str]:
    """``{"python": "3.11.7", "numpy": …, "scikit-learn": …, "skops"|"joblib": …}`` as
    installed in the process that writes the model."""
    names = [*VERSIONED_PACKAGES[framework]]
    if entry.get("format") in ("skops", "joblib"):
        names.append(str(entry["format"]))
    versions = {"python": platform.python_version()}
    for name in names:
        version = installed_version(name)
        if version is not None:
            versions[name] = version
    return versions


def _major(version: str) -> str:
    return version.split(".")[0]


def check_versions(manifest: dict[str, Any]) -> list[str]:
    """Compare the recorded versions with this interpreter's: one warning per mismatch.

    Raises ModelDirError when the framework's own package differs in its major version (a
    pickle or format of another major is not expected to load, or loads wrong)."""
    recorded = manifest.get("versions")
    if not isinstance(recorded, dict):
        return []
    warnings = []
    framework_pkg = FRAMEWORK_PACKAGE.get(str(manifest.get("framework")))
    for name, wrote in sorted(recorded.items()):
        here = platform.python_version() if name == "python" else installed_version(name)
        if here is None or here == str(wrote):
            continue
        if name == framework_pkg and _major(here) != _major(str(wrote)):
            raise ModelDirError(
                f"the model was written with {name} {wrote}; this server has {here} "
                "(another major version)",
                hint=f"serve it with {name}=={wrote}: `mlcloud image build` pins the model's "
                "versions, or pip install the same version",
            )
        warnings.append(f"model written with {name} {wrote}, loaded with {here}")
    return warnings


def _sklearn_signature(obj: Any) -> dict[str, Any] | None:
    # Fitted estimators record their input width; serving validates requests against it.
    width = getattr(obj, "n_features_in_", None)
    if isinstance(width, int) and width > 0:
        return {"inputs": {"shape": [-1, width], "dtype": "float64"}}
    return None


def _save_sklearn(obj: Any, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    try:
        import skops.io as sio

        sio.dump(obj, root / "model.skops")
        return {"file": "model.skops", "format": "skops"}
    except ImportError:
        import joblib

        joblib.dump(obj, root / "model.joblib")
        return {"file": "model.joblib", "format": "joblib"}


def _save_pytorch(obj: Any, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    import torch

    if isinstance(obj, torch.jit.ScriptModule):
        torch.jit.save(obj, str(root / "model.pt"))
        return {"file": "model.pt", "format": "torchscript"}
    module_class = options.get("module_class")
    if not module_class:
        raise ModelDirError(
            "saving an nn.Module needs module_class='pkg.module:Class' (or script it)"
        )
    torch.save(obj.state_dict(), root / "model.pt")
    return {
        "file": "model.pt",
        "format": "state_dict",
        "class": module_class,
        "init_kwargs": options.get("init_kwargs") or {},
    }


def _save_onnx(obj: Any, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    target = root / "model.onnx"
    if isinstance(obj, (bytes, bytearray)):
        target.write_bytes(bytes(obj))
    else:
        shutil.copyfile(Path(obj), target)
    return {"file": "model.onnx", "format": "onnx"}


def _save_custom(obj: Any, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    predictor = options.get("predictor")
    if not predictor or ":" not in str(predictor):
        raise ModelDirError("custom models need predictor='module:Class' inside the model dir")
    if obj is not None:
        shutil.copytree(Path(obj), root, dirs_exist_ok=True)
    return {"predictor": str(predictor)}


_SAVERS = {
    "sklearn": _save_sklearn,
    "pytorch": _save_pytorch,
    "onnx": _save_onnx,
    "custom": _save_custom,
}


def version_warnings(root: Path) -> list[str]:
    """What ``check_versions`` says about the model at ``root`` for this interpreter (a refusal
    becomes one line too); [] when it cannot be read (``endpoints show`` must still print)."""
    try:
        return check_versions(read_manifest(root))
    except ModelDirError as e:
        return [f"{e} (hint: {e.hint})" if e.hint else str(e)]
    except OSError:
        return []
