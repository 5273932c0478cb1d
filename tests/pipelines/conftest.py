"""Helpers for the pipeline tests: tiny real jobs on the local provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

STEP_PY = """\
import os, sys, time
from pathlib import Path
from mlcloud import runtime
time.sleep(float(os.environ.get("SLEEP", "0")))
if os.environ.get("FAIL_UNLESS") and not Path(os.environ["FAIL_UNLESS"]).exists():
    print("failing on purpose", flush=True)
    sys.exit(3)
if os.environ.get("SCORE"):
    runtime.log_metrics({"score": float(os.environ["SCORE"])})
print("step done", flush=True)
"""


def job(name: str, **env: str) -> dict[str, Any]:
    return {"name": name, "command": ["python", "step.py"], "env": env}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "step.py").write_text(STEP_PY)
    return tmp_path


def write(project: Path, data: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    path = project / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
