"""Shared fixtures: model directories and real ``bentoml serve`` servers on 127.0.0.1."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from serving.image import ImageResult, build_image
from tests.benchmarks.serving_procs import Server, free_port

REPO = Path(__file__).resolve().parents[2]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
SERVICE = "serving.service:MlcloudService"


@pytest.fixture(autouse=True)
def _mlcloud_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCLOUD_HOME", str(tmp_path / "mlcloud-home"))


@functools.cache
def iris_model() -> Any:
    """Fitted once per session (sklearn fits are slow on a busy 2-core box); don't mutate it."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)


@pytest.fixture(scope="session")
def iris_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models") / "iris"
    return modeldir.save(iris_model(), "sklearn", root, example=[IRIS_ROW])


def start_server(
    tmp: Path, env: dict[str, str], *, argv: list[str] | None = None, port: int | None = None
) -> Server:
    """Start the service (or ``argv``) on 127.0.0.1; the caller must ``stop()`` it."""
    port = port or free_port()
    argv = argv or [
        sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    env = {"BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp / "bentoml"), **env}
    for var in ("MLCLOUD_SERVE_MODEL", "MLCLOUD_SERVING_CONTRACT"):  # only what the test sets
        env.setdefault(var, "")
    return Server(argv, env, port, tmp / f"server-{port}.log", REPO)


VERTEX_BASE = "/v1/endpoints/1234/deployedModels/5678"
LOCAL_MAX_BODY = 4096
READY = {"local": "/readyz", "sagemaker": "/ping", "vertex": VERTEX_BASE, "azureml": "/health"}


@dataclass
class Farm:
    """One server per contract, plus the Bento the SageMaker one runs from."""

    servers: dict[str, Server] = field(default_factory=dict)
    bento: ImageResult | None = None
    bentoml_home: Path = Path()

    def bento_dir(self) -> Path:
        assert self.bento is not None
        name, version = self.bento.bento_tag.split(":")
        return self.bentoml_home / "bentos" / name / version


def _entrypoint(tmp: Path, env: dict[str, str], port_var: str) -> Server:
    """Start the image's entrypoint as a cloud would (SageMaker passes ``serve``)."""
    port = free_port()
    env = {**env, port_var: str(port), "MLCLOUD_SERVE_HOST": "127.0.0.1"}
    argv = [sys.executable, "-m", "serving.entrypoint", "serve"]
    return start_server(tmp, env, argv=argv, port=port)


@pytest.fixture(scope="session")
def farm(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """Every server of this directory, started together so their start-ups overlap
    (each ``bentoml serve`` costs seconds of CPU on a 2-core box), and stopped for sure.

    * local: ``bentoml serve`` with MLCLOUD_SERVE_MODEL and a small body limit;
    * vertex: the AIP_* variables, the model at AIP_STORAGE_URI (a local path here);
    * azureml: AZUREML_MODEL_DIR holding the model one level down, as Azure ML mounts it;
    * sagemaker: the Bento built by ``build_image`` (model baked in), started like the image:
      BENTO_PATH + ``python -m serving.entrypoint serve`` on SAGEMAKER_BIND_TO_PORT.
    """
    tmp = tmp_path_factory.mktemp("farm")
    farm = Farm(bentoml_home=tmp / "bentoml-store")
    try:
        farm.servers["local"] = start_server(
            tmp,
            {"MLCLOUD_SERVE_MODEL": str(iris_dir), "MLCLOUD_SERVE_MAX_BODY": str(LOCAL_MAX_BODY)},
        )
        vertex_env = {
            "AIP_HEALTH_ROUTE": VERTEX_BASE,
            "AIP_PREDICT_ROUTE": f"{VERTEX_BASE}:predict",
            "AIP_STORAGE_URI": str(iris_dir),  # gs:// URIs map to /gcs/ (unit-tested)
            "AIP_MODE": "PREDICTION",
        }
        farm.servers["vertex"] = _entrypoint(tmp, vertex_env, "AIP_HTTP_PORT")
        shutil.copytree(iris_dir, tmp / "azureml-models" / "iris")
        azure_env = {"AZUREML_MODEL_DIR": str(tmp / "azureml-models")}
        farm.servers["azureml"] = _entrypoint(tmp, azure_env, "MLCLOUD_SERVE_PORT")
        farm.bento = build_image(iris_dir, "mlcloud-iris", bentoml_home=farm.bentoml_home)
        sagemaker_env = {
            "BENTO_PATH": str(farm.bento_dir()),
            "BENTOML_HOME": str(farm.bentoml_home),
        }
        farm.servers["sagemaker"] = _entrypoint(tmp, sagemaker_env, "SAGEMAKER_BIND_TO_PORT")
        for name, server in farm.servers.items():
            server.wait_ready(READY[name], timeout=240)
        yield farm
    finally:
        for server in farm.servers.values():
            server.terminate()  # all at once: graceful shutdowns overlap
        for server in farm.servers.values():
            server.stop()
