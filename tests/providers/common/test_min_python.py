"""What ships inside every job archive runs on the training image's Python, which may be old:
the launcher and the vendored runtime support Python 3.8 and later (issue 10, item 9)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from providers.common import staging

MINIMUM = "3.8"
# Methods of builtin types that vermin cannot see on an untyped receiver (``k.removeprefix``).
NEWER_METHODS = {"removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9"}


def _shipped() -> list[Path]:
    """Every Python file a job archive carries besides the user's own code."""
    return [e.path for e in staging._runtime_entries() if e.path is not None]


def test_shipped_files_are_the_expected_ones() -> None:
    names = sorted(p.name for p in _shipped())
    assert names == ["errors.py", "launcher.py", "modeldir.py", "modelprofile.py", "runtime.py"]


def test_vermin_finds_nothing_newer_than_the_minimum() -> None:
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    out = subprocess.run(
        [vermin, f"-t={MINIMUM}-", "--no-tips", "--violations", *map(str, _shipped())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.name)
def test_no_newer_str_methods(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        f"{path.name}:{node.lineno} .{node.attr}() needs Python {NEWER_METHODS[node.attr]}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in NEWER_METHODS
    ]
    assert not found, found
