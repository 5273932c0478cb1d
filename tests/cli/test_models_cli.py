"""``mlcloud models`` as users run it: a real subprocess, JSON output on every command, one-line
errors with hints and the exit-code rule (2: bad input, 1: refused or failed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from tests.conftest import MLCLOUD

pytestmark = pytest.mark.timeout(180)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLCLOUD, *args], capture_output=True, text=True, timeout=120)


def ok_json(*args: str) -> Any:
    out = run(*args, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def refused(code: int, *args: str) -> str:
    out = run(*args)
    assert out.returncode == code, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and lines[1].startswith("hint: "), out.stderr
    assert "Traceback" not in out.stderr
    return out.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    root = tmp_path_factory.mktemp("m")
    return modeldir.save(LogisticRegression(max_iter=300).fit(x, y), "sklearn", root / "iris")


def test_register_alias_history_rollback_delete(model: Path) -> None:
    first = ok_json("models", "register", str(model), "--name", "iris", "--alias", "champion")
    assert (first["name"], first["version"], first["provider"]) == ("iris", 1, "local")
    second = ok_json("models", "register", str(model), "--name", "iris", "--reason", "retrain")
    assert second["version"] == 2 and second["details"]["reason"] == "retrain"
    move = ok_json("models", "alias", "iris", "champion", "2", "--reason", "better")
    assert (move["from_version"], move["to_version"], move["reason"]) == (1, 2, "better")
    assert ok_json("models", "list") == [
        {**ok_json("models", "list")[0], "name": "iris", "versions": 2, "latest": 2,
         "aliases": {"champion": 2}}
    ]  # fmt: skip
    shown = ok_json("models", "show", "iris")
    assert [v["version"] for v in shown["versions"]] == [2, 1]
    version = ok_json("models", "show", "iris@champion")
    assert version["ref"] == "iris:2" and version["integrity"] == [] and version["lineage"]
    back = ok_json("models", "rollback", "iris", "--reason", "regression")
    assert (back["from_version"], back["to_version"], back["followers"]) == (2, 1, [])
    history = ok_json("models", "history", "iris")
    assert [(m["from_version"], m["to_version"]) for m in history] == [(None, 1), (1, 2), (2, 1)]
    assert history[2]["reason"] == "regression" and all(m["by"] for m in history)
    text = run("models", "history", "iris").stdout
    assert "SEQ" in text and "regression" in text and "2 → 1" in text
    assert "champion→1" in run("models").stdout

    assert "iris@champion" in refused(1, "models", "delete", "iris:1")
    assert ok_json("models", "delete", "iris:2") == {"deleted": "iris:2"}
    refused(2, "models", "show", "iris:2")  # gone
    refused(2, "models", "show", "iris:x")
    refused(2, "models", "alias", "iris", "Champion!", "1")
    refused(2, "models", "show", "nope")
    assert "NAME@ALIAS" in refused(2, "deploy", str(model), "--name", "x", "--follow-alias")


def test_tampered_version_is_reported_and_refused_for_deploy(model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model, tmp_path / "copy")
    ok_json("models", "register", str(copy), "--name", "t", "--alias", "champion")
    (copy / "model.skops").write_bytes(b"tampered")
    shown = run("models", "show", "t@champion")
    assert shown.returncode == 0 and "INTEGRITY: model file model.skops does not match" in (
        shown.stdout
    )
    err = refused(1, "deploy", "t@champion", "--name", "t")
    assert "t:1" in err and "no longer matches its registered sha256" in err
