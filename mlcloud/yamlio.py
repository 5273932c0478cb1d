"""YAML reading with errors that point at the file and line, and ``--set key=value`` overrides.

User files are untrusted input: they are read bounded in size (``MAX_BYTES``, so ``/dev/zero``
is refused before memory fills) and YAML aliases are refused (a "billion laughs" alias bomb
expands a few hundred bytes into gigabytes; no mlcloud file needs them).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mlcloud.errors import ConfigError, MlcloudError, SpecError

MAX_BYTES = 1 << 20  # 1 MiB: a job spec or config is a few KB; data goes in inputs, not YAML


class AliasRefused(ValueError):
    """A YAML alias (``*name``) in a user file."""


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses aliases (each would be expanded in place)."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                mark = self.get_mark()
                raise AliasRefused(
                    f"YAML aliases (*name) are not allowed (near line {mark.line + 1}, "
                    f"column {mark.column + 1}): write the value out"
                )
            return super().compose_node(parent, index)

    loader = NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_text_bounded(path: Path, limit: int = MAX_BYTES) -> str:
    """The file's text, refusing more than ``limit`` bytes before reading them all (a device
    such as /dev/zero reports size 0, so the read itself is bounded)."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit // 1024} KiB")
    return data.decode("utf-8")


def read_yaml(path: Path, *, what: str, error: type[MlcloudError] = SpecError) -> Any:
    import yaml

    try:
        text = read_text_bounded(path)
    except FileNotFoundError:
        raise error(f"{what} not found: {path}", hint="check the path") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise error(f"cannot read {what} {path}: {e}") from None
    try:
        return safe_load(text)
    except AliasRefused as e:
        raise error(f"{what} {path}: {e}", hint="repeat the value instead of *alias") from None
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
        return safe_load(text) if text.strip() else ""
    except AliasRefused as e:
        raise SpecError(f"--set value {text[:40]!r}: {e}") from None
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


__all__ = [
    "ConfigError",
    "apply_overrides",
    "parse_scalar",
    "read_text_bounded",
    "read_yaml",
    "safe_load",
]
