"""The README's "Registry" walk-through, run verbatim on a fresh machine (no mlcloud.yaml, an
empty MLCLOUD_HOME): train, register, alias, deploy following the alias, a second version, move,
rollback, history, lineage (issue 11). Bounded by WALKTHROUGH_TIMEOUT."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MLCLOUD, REPO
from tests.unit.test_tour import fresh_env

WALKTHROUGH_TIMEOUT = 420
pytestmark = pytest.mark.timeout(WALKTHROUGH_TIMEOUT + 60)


def walkthrough_commands() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Registry") :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the Registry section has no bash block"
    return block.group(1)


@pytest.mark.skipif(shutil.which("mlcloud") is None, reason="the mlcloud entry point is needed")
def test_readme_registry_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    script = walkthrough_commands()
    for step in ("models register", "--follow-alias", "models alias", "models rollback",
                 "models history", "models show"):  # fmt: skip
        assert step in script
    env = fresh_env(tmp_path)
    try:
        out = subprocess.run(
            ["bash", "-e", "-u", "-o", "pipefail", "-x", "-c", script],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=WALKTHROUGH_TIMEOUT,
        )  # fmt: skip
    finally:  # a failed step must not leave the endpoint's servers running
        subprocess.run([*MLCLOUD, "undeploy", "iris"], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    assert "Traceback" not in out.stderr
    assert "iris@champion: 1 → 2" in out.stdout and "iris@champion: 2 → 1" in out.stdout
    assert "redeployed to iris:2" in out.stdout and "redeployed to iris:1" in out.stdout
    assert "endpoint iris on local" in out.stdout  # the lineage names the endpoint
    history = subprocess.run(
        [*MLCLOUD, "models", "history", "iris", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    moves = [(m["from_version"], m["to_version"]) for m in json.loads(history.stdout)]
    assert moves == [(None, 1), (1, 2), (2, 2), (2, 1), (1, 1)]
