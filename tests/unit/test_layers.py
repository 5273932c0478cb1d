"""The layers of DESIGN.md, enforced: `lint-imports` checks the contracts in .importlinter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run `lint-imports` on the packages under ``root`` with the repository's contracts."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [exe, "--config", str(REPO / ".importlinter"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_import_contracts_are_kept() -> None:
    out = lint_imports(REPO)
    assert out.returncode == 0, f"lint-imports failed:\n{out.stdout}\n{out.stderr}"
    contracts = (REPO / ".importlinter").read_text().count("[importlinter:contract:")
    assert f"{contracts} kept, 0 broken" in out.stdout, out.stdout


def test_an_upward_import_breaks_the_contracts(tmp_path: Path) -> None:
    # The contracts are not vacuous: a copy of the tree with the imports this refactor removed
    # (config -> registry, the CLI -> the store, the core -> serving) fails them.
    for package in ("mlcloud", "providers", "serving"):
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for module, line in (
        ("config", "from mlcloud import registry"),
        ("cli", "from mlcloud.store import Store"),
        ("api", "import serving.image"),
    ):
        with (tmp_path / "mlcloud" / f"{module}.py").open("a") as fh:
            fh.write(f"\n\ndef _upward() -> None:\n    {line}  # noqa\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    assert "mlcloud.config is not allowed to import mlcloud.registry" in out.stdout, out.stdout
    assert "mlcloud.cli -> mlcloud.store" in out.stdout
    assert "mlcloud.api -> serving.image" in out.stdout
