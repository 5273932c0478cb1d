"""Load an mlcloud model directory into a :class:`Predictor`.

Every load starts with :func:`mlcloud.modeldir.verify`: each file's sha256 must match the
manifest, so a tampered artifact is refused before anything is deserialised. Then the trust check
(:func:`mlcloud.modeldir.check_trust`): a format that runs code when loaded (a joblib pickle, a
torch module class, a custom predictor) needs a grant, since whoever writes a model directory
also writes its manifest. Pickle-based formats (joblib) are only read from bytes whose hash was
checked in the same read. Framework libraries are imported only for the framework the directory
names.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlcloud import modeldir
from mlcloud.modeldir import ModelDirError
from serving.inputs import InputSpec, to_batch, to_jsonable

# Types skops reports as "untrusted" that we accept anyway (the list lives with the model dir,
# which converts a job's pickles to skops with it).
logger = logging.getLogger(__name__)
TRUSTED_SKOPS_TYPES: frozenset[str] = modeldir.SKOPS_TRUSTED_TYPES
SKLEARN_METHODS = ("predict", "predict_proba", "decision_function", "transform")


class Predictor(ABC):
    """A loaded model: ``predict(instances) -> predictions``, one prediction per input row."""

    framework: str = ""
    # True when rows from several requests can be stacked into one model call.
    batchable: bool = True

    def __init__(self, manifest: dict[str, Any], spec: InputSpec, default_dtype: str) -> None:
        self.manifest = manifest
        self.input_spec = spec
        self.default_dtype = default_dtype
        # library versions that differ from the ones that wrote the model (load_model)
        self.version_warnings: list[str] = []

    def prepare(self, instances: Any) -> Any:
        """Validate one request's ``instances``; raises InputError (a 4xx) if unacceptable."""
        return to_batch(instances, self.input_spec, self.default_dtype)

    @abstractmethod
    def run(self, batch: Any) -> list[Any]:
        """Predict for a prepared batch; returns one JSON-ready value per row."""

    def predict(self, instances: list[Any]) -> list[Any]:
        return self.run(self.prepare(instances))


class SklearnPredictor(Predictor):
    framework = "sklearn"

    def __init__(self, model: Any, method: str, manifest: dict[str, Any], spec: InputSpec):
        super().__init__(manifest, spec, "float64")
        self._call: Callable[[Any], Any] = getattr(model, method)

    def run(self, batch: Any) -> list[Any]:
        return to_jsonable(self._call(batch))


class OnnxPredictor(Predictor):
    framework = "onnx"

    def __init__(self, session: Any, manifest: dict[str, Any], spec: InputSpec, dtype: str):
        super().__init__(manifest, spec, dtype)
        self._session = session
        self._input = session.get_inputs()[0].name
        self._output = manifest["entry"].get("output") or session.get_outputs()[0].name

    def run(self, batch: Any) -> list[Any]:
        return to_jsonable(self._session.run([self._output], {self._input: batch})[0])


class TorchPredictor(Predictor):
    framework = "pytorch"

    def __init__(self, module: Any, manifest: dict[str, Any], spec: InputSpec) -> None:
        super().__init__(manifest, spec, "float32")
        self._module = module
        # JSON floats arrive as float64; feed float inputs in the module's own float type.
        params = [p for p in module.parameters() if p.is_floating_point()]
        self._float_dtype = params[0].dtype if params else None

    def run(self, batch: Any) -> list[Any]:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(batch))
        if self._float_dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self._float_dtype)
        with torch.inference_mode():
            out = self._module(tensor)
        return to_jsonable(out.detach().cpu().numpy())


class CustomPredictor(Predictor):
    """A user class with ``predict(self, inputs)``; it gets the validated JSON rows."""

    framework = "custom"
    batchable = False

    def __init__(self, obj: Any, manifest: dict[str, Any], spec: InputSpec) -> None:
        super().__init__(manifest, spec, "float64")
        self._obj = obj

    def prepare(self, instances: Any) -> Any:
        if self.input_spec.shape is not None or self.input_spec.dtype is not None:
            to_batch(instances, self.input_spec, self.default_dtype)  # validate only
        return instances

    def run(self, batch: Any) -> list[Any]:
        return to_jsonable(self._obj.predict(batch))


def load_model(model_dir: Path, trust: str | None = None) -> Predictor:
    """Verify ``model_dir`` against its manifest and load it; ModelDirError if it cannot be.

    A model that runs code when loaded (a pickle, a torch module class, a custom predictor)
    loads only when ``trust`` grants it: the model's digest or ``*`` (``None``: the process's
    ``MLCLOUD_TRUSTED_MODEL``, which mlcloud's deploy sets from its trust decision in every
    provider's serving container). Checked on the verified manifest, before any import."""
    root = Path(model_dir).resolve()
    manifest = modeldir.verify(root)
    if trust is None:
        trust = os.environ.get(modeldir.TRUST_ENV, "")
    modeldir.check_trust(root, manifest, trust)
    # Before unpickling: another major version of the framework is refused with a hint.
    version_warnings = modeldir.check_versions(manifest)
    for warning in version_warnings:
        logger.warning("%s: %s", root, warning)
    spec = InputSpec.from_signature(manifest.get("signature"))
    loader = _LOADERS[manifest["framework"]]
    try:
        predictor = loader(root, manifest, spec)
        predictor.version_warnings = version_warnings
        return predictor
    except ModelDirError:
        raise
    except ImportError as e:
        raise ModelDirError(
            f"cannot load a {manifest['framework']} model: {e} (install mlcloud[serve])"
        ) from None
    except Exception as e:
        raise ModelDirError(f"cannot load the model in {root}: {type(e).__name__}: {e}") from e


def _entry_file(root: Path, manifest: dict[str, Any]) -> Path:
    rel = manifest["entry"].get("file")
    if not isinstance(rel, str):
        raise ModelDirError(f"{modeldir.MANIFEST}: entry.file is required for this framework")
    return root / rel


def _load_sklearn(root: Path, manifest: dict[str, Any], spec: InputSpec) -> Predictor:
    entry = manifest["entry"]
    path = _entry_file(root, manifest)
    method = entry.get("method", "predict")
    if method not in SKLEARN_METHODS:
        raise ModelDirError(f"entry.method must be one of {', '.join(SKLEARN_METHODS)}")
    fmt = entry.get("format") or ("skops" if path.suffix == ".skops" else "joblib")
    if fmt == "skops":
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        refused = sorted(set(untrusted) - TRUSTED_SKOPS_TYPES)
        if refused:
            raise ModelDirError(
                f"{path.name} contains types mlcloud does not trust: {', '.join(refused)}"
            )
        model = sio.load(path, trusted=untrusted)
    elif fmt == "joblib":
        import joblib

        # Hash and unpickle the very same bytes: no window to swap the file in between.
        data = path.read_bytes()
        rel = path.relative_to(root).as_posix()
        if hashlib.sha256(data).hexdigest() != manifest["files"].get(rel):
            raise ModelDirError(f"{rel} changed after verification: refusing to unpickle it")
        model = joblib.load(io.BytesIO(data))
    else:
        raise ModelDirError(f"unknown sklearn entry.format {fmt!r} (skops or joblib)")
    if not callable(getattr(model, method, None)):
        raise ModelDirError(f"the sklearn model has no {method}() method")
    return SklearnPredictor(model, method, manifest, spec)


_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _load_onnx(root: Path, manifest: dict[str, Any], spec: InputSpec) -> Predictor:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small CPU models: threads cost more than they give
    session = ort.InferenceSession(
        str(_entry_file(root, manifest)), options, providers=["CPUExecutionProvider"]
    )
    first = session.get_inputs()[0]
    dtype = _ONNX_DTYPES.get(first.type)
    if dtype is None:
        raise ModelDirError(f"unsupported ONNX input type {first.type}")
    if spec.shape is None:  # the graph knows its own input shape
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in first.shape)
        spec = InputSpec(dims or None, spec.dtype)
    # The graph's dtype wins: onnxruntime refuses any other.
    return OnnxPredictor(session, manifest, InputSpec(spec.shape, dtype), dtype)


@contextmanager
def _model_dir_on_path(root: Path) -> Iterator[None]:
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def _import_from_model_dir(
    root: Path, manifest: dict[str, Any], ref: str, *, base: type | None = None
) -> type:
    """Import the class ``module:Class``.

    A module inside the model dir must be listed (so hash-verified). Without ``base`` the module
    must be inside the model dir; with it, an installed module may provide a subclass of
    ``base`` (so a manifest can never name e.g. ``os:system`` to be called at load).
    """
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ModelDirError(f"{ref!r} must be 'module:Class'")
    rel = module_name.replace(".", "/")
    in_dir = [r for r in (f"{rel}.py", f"{rel}/__init__.py") if (root / r).is_file()]
    if in_dir and in_dir[0] not in manifest["files"]:
        raise ModelDirError(f"{in_dir[0]} is not listed in {modeldir.MANIFEST}: refusing to run it")
    if not in_dir and base is None:
        raise ModelDirError(f"module {module_name!r} must be a file inside the model dir")
    with _model_dir_on_path(root):
        module = importlib.import_module(module_name)
    cls = getattr(module, attr, None)
    if not inspect.isclass(cls) or (base is not None and not issubclass(cls, base)):
        kind = f"a subclass of {base.__name__}" if base is not None else "a class"
        raise ModelDirError(f"{ref} is not {kind}")
    return cls


def _load_pytorch(root: Path, manifest: dict[str, Any], spec: InputSpec) -> Predictor:
    import torch

    entry = manifest["entry"]
    path = _entry_file(root, manifest)
    if entry.get("format") == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    elif entry.get("format") == "state_dict":
        ref = str(entry.get("class", ""))
        cls = _import_from_model_dir(root, manifest, ref, base=torch.nn.Module)
        module = cls(**(entry.get("init_kwargs") or {}))
        # weights_only: a state dict is tensors; never unpickle arbitrary objects.
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        raise ModelDirError("pytorch entry.format must be torchscript or state_dict")
    module.eval()
    return TorchPredictor(module, manifest, spec)


def _load_custom(root: Path, manifest: dict[str, Any], spec: InputSpec) -> Predictor:
    cls = _import_from_model_dir(root, manifest, str(manifest["entry"].get("predictor", "")))
    params = inspect.signature(cls).parameters
    obj = cls(root) if params else cls()  # a constructor argument receives the model dir
    if not callable(getattr(obj, "predict", None)):
        raise ModelDirError(f"{type(obj).__name__} has no predict(self, inputs) method")
    return CustomPredictor(obj, manifest, spec)


_LOADERS: dict[str, Callable[[Path, dict[str, Any], InputSpec], Predictor]] = {
    "sklearn": _load_sklearn,
    "onnx": _load_onnx,
    "pytorch": _load_pytorch,
    "custom": _load_custom,
}
