"""The one exit-code rule (issue 10, item 13): 2 when the user's input is wrong, 1 when
something failed. Each command is run as a user runs it, in a fresh MLCLOUD_HOME."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mlcloud.cli import EXIT_BAD_INPUT, EXIT_FAILED, exit_code
from mlcloud.errors import (
    ConfigError,
    MlcloudError,
    ModelError,
    NotFoundLocally,
    ProviderError,
    SpecError,
    UnsupportedFeature,
)
from tests.conftest import MLCLOUD, REPO

IRIS = str(REPO / "examples/iris/job.yaml")
DDP = str(REPO / "examples/ddp/job.yaml")


def test_rule_by_error_class() -> None:
    for bad in (SpecError("x"), ConfigError("x"), NotFoundLocally("x"),
                UnsupportedFeature("gpus", "local")):  # fmt: skip
        assert exit_code(bad) == EXIT_BAD_INPUT, bad
    for failed in (ProviderError("x", provider_type="sagemaker"), ModelError("x"),
                   MlcloudError("x"), RuntimeError("x")):  # fmt: skip
        assert exit_code(failed) == EXIT_FAILED, failed


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "show", "no-such-job"),
        ("logs", "no-such-job"),
        ("cancel", "no-such-job"),
        ("endpoints", "show", "no-such-endpoint"),
        ("predict", "no-such-endpoint", "--data", "[1]"),
        ("deploy", "no-such-job", "--name", "x"),
        ("deploy", "/", "--name", "Bad_Name"),
        ("train", IRIS, "--set", "resources.accelerators=T4:64", "--dry-run"),
        ("train", IRIS, "--set", "nodse=2", "--dry-run"),
        ("train", DDP, "--provider", "sagemaker"),  # a real submit refuses missing settings
        ("predict", "x", "--data", "@no-such-file.json"),
    ],
)
def test_bad_input_exits_2_with_one_error_and_one_hint(tmp_path: Path, args: tuple[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCLOUD_", "AWS_"))}
    env.update(MLCLOUD_HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    out = subprocess.run([*MLCLOUD, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert sum(line.startswith("error: ") for line in lines) == 1, out.stderr
    assert sum(line.startswith("hint: ") for line in lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
