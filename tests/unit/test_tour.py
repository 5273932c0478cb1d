"""The README's 5-minute tour, run verbatim on a fresh machine: no mlcloud.yaml, an empty
MLCLOUD_HOME, no cloud settings (issue 10, item 10). Bounded: the whole tour gets TOUR_TIMEOUT."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

TOUR_TIMEOUT = 420


def tour_commands() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## A 5-minute tour") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the tour has no bash block"
    return block.group(1)


def fresh_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLCLOUD_", "AWS_", "GOOGLE_", "AZURE_", "CLOUDSDK_"))}  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    env.update(MLCLOUD_HOME=str(tmp_path / "mlcloud"), XDG_CONFIG_HOME=str(home / ".config"),
               HOME=str(home), BENTOML_HOME=str(tmp_path / "bentoml"))  # fmt: skip
    return env


@pytest.mark.skipif(shutil.which("mlcloud") is None, reason="the mlcloud entry point is needed")
def test_readme_tour_runs_verbatim_on_a_fresh_machine(tmp_path: Path) -> None:
    script = tour_commands()
    assert "--dry-run" in script and "mlcloud predict" in script
    # -x: the failing command is named in the output; -e: any failure fails the tour
    out = subprocess.run(
        ["bash", "-e", "-u", "-o", "pipefail", "-x", "-c", script],
        cwd=REPO, env=fresh_env(tmp_path), capture_output=True, text=True, timeout=TOUR_TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "<role_arn>" in out.stdout  # the dry-run shows what is missing
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and all(s in warnings[0] for s in ("region", "role_arn", "bucket"))
    assert "Traceback" not in out.stderr
