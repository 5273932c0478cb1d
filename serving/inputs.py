"""Request-side validation: turn a JSON ``instances`` value into a checked numpy batch.

BentoML's own IO layer answers 500 for wrong shapes and silently reshapes 1-D input, so every
payload is checked here against the model's signature before the model sees it; a failure is an
:class:`InputError`, which the HTTP layer turns into a 4xx naming the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlcloud.errors import MlcloudError

# numpy kinds a JSON value may arrive as, per signature dtype: no silent str -> float casts.
_ACCEPTED_KINDS = {
    "float32": "iuf",
    "float64": "iuf",
    "int32": "iu",
    "int64": "iu",
    "bool": "b",
    "string": "U",
}
_NUMPY_DTYPES = {"string": "str"}


class InputError(MlcloudError):
    """The request payload is not something this model accepts (a client error; ``status``
    is the HTTP status the server answers with)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """Expected input batch: ``shape`` with -1 for any size, ``dtype`` a signature dtype."""

    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @classmethod
    def from_signature(cls, signature: dict[str, Any] | None) -> InputSpec:
        inputs = (signature or {}).get("inputs") or {}
        shape = inputs.get("shape")
        return cls(tuple(shape) if shape else None, inputs.get("dtype"))

    def describe(self) -> str:
        shape = list(self.shape) if self.shape else "any"
        return f"shape {shape} (-1 = any size), dtype {self.dtype or 'numeric'}"


def _reject_constant(name: str) -> Any:
    raise InputError(f"{name} is not valid JSON; send finite numbers")


def parse_json(body: bytes) -> Any:
    """Parse a request body as strict JSON (no NaN/Infinity); never anything but JSON."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except InputError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise InputError("request body JSON is nested too deeply") from None


def extract_instances(payload: Any) -> list[Any]:
    """``{"instances": [...]}`` -> the list; anything else is an InputError."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InputError('request body must be a JSON object {"instances": [...]}')
    unknown = sorted(set(payload) - {"instances", "parameters"})
    if unknown:
        raise InputError(f"unknown field(s) in request body: {', '.join(unknown)}")
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InputError("'instances' must be a non-empty list of inputs (one per row)")
    return instances


def to_batch(instances: list[Any], spec: InputSpec, default_dtype: str = "float64") -> np.ndarray:
    """Check ``instances`` against ``spec`` and return it as an array of the model's dtype."""
    if not isinstance(instances, list) or not instances:
        raise InputError("'instances' must be a non-empty list of inputs (one per row)")
    try:
        raw = np.asarray(instances)
    except ValueError:
        raise InputError("'instances' rows have different lengths (ragged input)") from None
    if raw.dtype == object:
        raise InputError("'instances' must be rows of equal length holding numbers of one type")
    dtype = spec.dtype or default_dtype
    if raw.dtype.kind not in _ACCEPTED_KINDS[dtype]:
        got = {"U": "strings", "b": "booleans", "f": "floats"}.get(raw.dtype.kind, str(raw.dtype))
        raise InputError(f"'instances' must hold {dtype} values, got {got}")
    if spec.shape is not None:
        ok = raw.ndim == len(spec.shape) and all(
            want in (-1, got) for want, got in zip(spec.shape, raw.shape, strict=False)
        )
        if not ok:
            raise InputError(
                f"'instances' has shape {list(raw.shape)}, expected {list(spec.shape)} "
                "(-1 = any size)",
                status=422,
            )
    elif raw.ndim < 1:
        raise InputError("'instances' must be a list of rows")
    batch = raw.astype(_NUMPY_DTYPES.get(dtype, dtype), copy=False)
    if batch.dtype.kind == "f" and not np.isfinite(batch).all():
        raise InputError("'instances' holds values out of range for " + dtype)
    return batch


def to_jsonable(outputs: Any) -> list[Any]:
    """Model outputs -> a JSON-ready list, one entry per input row."""
    if hasattr(outputs, "tolist"):
        outputs = outputs.tolist()
    return list(outputs)
