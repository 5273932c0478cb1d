"""YAML reading with errors that point at the file and line, and ``--set key=value`` overrides."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mlcloud.errors import ConfigError, MlcloudError, SpecError


def read_yaml(path: Path, *, what: str, error: type[MlcloudError] = SpecError) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} not found: {path}", hint="check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"cannot read {what} {path}: {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{what} {path} is not valid YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as e:  # e.g. absurd nesting
        raise error(f"{what} {path} could not be parsed: {e}") from None


def parse_scalar(text: str) -> Any:
    """A ``--set`` value is read as YAML, so ``5`` is an int and ``[a, b]`` a list."""
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(data: Any, overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a mapping (copied). Bad syntax is a SpecError."""
    if not isinstance(data, dict):
        raise SpecError("cannot apply --set: the file is not a mapping of fields")
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set resources.cpus=4")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {part} is not a mapping")
            node = child
        node[parts[-1]] = parse_scalar(raw)
    return out


__all__ = ["ConfigError", "apply_overrides", "parse_scalar", "read_yaml"]
