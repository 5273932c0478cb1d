"""Golden plans of endpoint operations: the plan as ``--dry-run`` prints it, hashes masked.

Content hashes (model digests, content-named resources) change with the test's model files and
the shared launcher, not with the provider; everything else is compared. Regenerate after an
intended change with ``MLCLOUD_UPDATE_GOLDEN=1 pytest <test file>``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from mlcloud.records import Plan

GOLDEN = Path(__file__).resolve().parents[2] / "golden"
_HEX = re.compile(r"[0-9a-f]{8,64}")


def masked(plan: Plan[Any], *extra: str) -> str:
    """The plan's JSON with every hex run and each of ``extra`` (e.g. a tmp path) masked."""
    text = plan.to_json()
    for value in extra:
        text = text.replace(value, "<tmp>")
    text = _HEX.sub("<hash>", text)
    return json.dumps(json.loads(text), indent=2) + "\n"


def check_golden(provider_type: str, name: str, text: str) -> None:
    path = GOLDEN / provider_type / f"{name}.json"
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no golden file {path}: run with MLCLOUD_UPDATE_GOLDEN=1"
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), name)
        )
        pytest.fail(f"plan {name} changed (MLCLOUD_UPDATE_GOLDEN=1 to accept):\n{diff}")
