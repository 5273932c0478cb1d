"""Fixtures: a temp MLCLOUD_HOME, the fake workspace wired under the real MLClient, a provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcloud.config import Profile
from mlcloud.store import Store
from tests.fakes.azureml import Installed, install

SETTINGS: dict[str, Any] = {
    "subscription_id": "00000000-0000-4000-8000-000000000001",
    "resource_group": "rg",
    "workspace": "ws1",
    "compute": "cpu-cluster",
    "serving_image": "mlcloudacr.azurecr.io/mlcloud-serve:1",
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MLCLOUD_HOME", str(path))
    # the SDK records git facts of the working directory; keep them out of the bodies
    monkeypatch.chdir(tmp_path)
    return path


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Installed]:
    installed = install(monkeypatch)
    yield installed
    installed.fake.close()


@pytest.fixture
def store(home: Path) -> Iterator[Store]:
    st = Store.open()
    yield st
    st.close()


def make_provider(store: Store, **settings: Any) -> Any:
    from providers.azureml import AzureMLProvider

    provider = AzureMLProvider(Profile("azure", "azureml", {**SETTINGS, **settings}), store)
    provider.poll_interval = 0.01
    return provider


@pytest.fixture
def provider(azure: Installed, store: Store) -> Any:
    return make_provider(store)


def write_source(root: Path, body: str = "print('hi')\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(body)
    return root
