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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the marks into groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """For pytest-xdist's ``--dist loadgroup`` (the README's test command): a module's tests
    stay on one worker, in order (its module-scoped servers start once; some tests build on
    the previous one's state), every Ray test shares one worker (one Ray cluster in its
    network namespace, not one per worker) and so do the serving tests (the SageMaker start
    needs the machine's one /opt/ml and port 8080: a second worker would skip it)."""
    for item in items:
        path = Path(str(item.path)).resolve().relative_to(REPO)
        if path.parts[:3] == ("tests", "providers", "ray"):
            group = "ray"
        elif path.parts[:2] == ("tests", "serving"):
            group = "serving"
        else:
            group = path.as_posix()
        item.add_marker(pytest.mark.xdist_group(group))
