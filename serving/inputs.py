"""Request-side validation: turn a JSON ``instances`` value into a checked numpy batch.

BentoML's own IO layer answers 500 for wrong shapes and silently reshapes 1-D input, so every
payload is checked here against the model's signature before the model sees it; a failure is an
:class:`InputError`, which the HTTP layer turns into a 4xx naming the problem.
"""

from __future__ import annotations

import csv
import io
import json
import math
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


# SageMaker passes the caller's content type through (InvokeEndpoint, batch transform), and
# batch transform's MULTI_RECORD strategy sends many CSV rows or JSON lines in one body.
JSON_TYPE = "application/json"
CSV_TYPE = "text/csv"
JSONLINES_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
SAGEMAKER_TYPES = (JSON_TYPE, CSV_TYPE, *JSONLINES_TYPES)


def _number(text: str, row: int) -> int | float:
    value = text.strip()
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"CSV row {row}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InputError(f"CSV row {row}: {value!r} is not a finite number")
    return number


def parse_csv(body: bytes) -> list[Any]:
    """CSV rows of numbers (no header) -> one instance per row."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"CSV body is not UTF-8: {e}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows:
        raise InputError("CSV body has no rows")
    return [[_number(v, n) for v in row] for n, row in enumerate(rows, 1)]


def parse_jsonlines(body: bytes) -> list[Any]:
    """JSON Lines -> one instance per non-empty line."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise InputError("JSON Lines body has no lines")
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append(parse_json(line))
        except InputError as e:
            raise InputError(f"JSON Lines line {n}: {e}") from None
    return out


def parse_instances(body: bytes, media: str) -> list[Any]:
    """The instances of a body of media type ``media`` (one of SAGEMAKER_TYPES)."""
    if media == CSV_TYPE:
        return parse_csv(body)
    if media in JSONLINES_TYPES:
        return parse_jsonlines(body)
    return extract_instances(parse_json(body))


def render(predictions: list[Any], media: str) -> bytes:
    """Predictions as ``media``: a JSON object, one CSV row or one JSON line per instance."""
    if media == CSV_TYPE:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for p in predictions:
            writer.writerow(p if isinstance(p, list) else [p])
        return out.getvalue().encode()
    if media in JSONLINES_TYPES:
        return b"".join(json.dumps(p).encode() + b"\n" for p in predictions)
    return json.dumps({"predictions": predictions}).encode()


def answer_type(accept: str, request_media: str) -> str:
    """The first supported type in ``Accept``; else the request's own type (batch transform
    joins output lines to input lines, so CSV in means CSV out unless asked otherwise)."""
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in SAGEMAKER_TYPES:
            return media
    return request_media
