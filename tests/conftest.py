"""Test-wide isolation: no test reads or writes the user's ~/.mlcloud or ~/.config/mlcloud."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.pg import pg_database, pg_server, pg_url, store_backend  # noqa: F401 (real PostgreSQL)
from tests.providers.sagemaker.moto_server import bucket, moto_url  # noqa: F401 (one per session)

# The shared conformance suite's asserts show their diffs like any test module's.
pytest.register_assert_rewrite("tests.conformance")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_mlcloud(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("mlcloud-home")
    monkeypatch.setenv("MLCLOUD_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    unset = ("MLCLOUD_PROVIDER", "MLCLOUD_CONFIG", "MLCLOUD_DATABASE_URL", "MLFLOW_TRACKING_URI")
    for var in unset:
        monkeypatch.delenv(var, raising=False)
    return home


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running the real `mlcloud` CLI in a subprocess."""
    env = dict(os.environ)
    env.update(extra)
    return env


MLCLOUD = [sys.executable, "-m", "mlcloud.cli"]
