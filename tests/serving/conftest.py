"""Shared fixtures: model directories and real ``bentoml serve`` servers on 127.0.0.1."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from serving.image import ImageResult, build_image
from tests.benchmarks.serving_procs import Server, free_port
from tests.fakes.gcs import FakeGcs

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
READY = {
    "local": "/readyz",
    "sagemaker": "/ping",
    "sagemaker_exact": "/ping",
    "vertex": VERTEX_BASE,
    "azureml": "/health",
}
SAGEMAKER_ROOT = Path("/opt/ml")
SAGEMAKER_PORT = 8080


@dataclass
class Farm:
    """One server per contract, plus the Bento the SageMaker one runs from."""

    servers: dict[str, Server] = field(default_factory=dict)
    bento: ImageResult | None = None
    bentoml_home: Path = Path()
    gcs: FakeGcs | None = None
    vertex_uri: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # server -> why it could not start

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


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _sagemaker_mount(iris_dir: Path) -> Iterator[str | None]:
    """The model at /opt/ml/model as SageMaker leaves it (root-owned, extracted from
    model.tar.gz with modes 0600/0700), held under a lock: the path and port are fixed.
    Yields None with the reason it cannot be set up here (not root, 8080 taken, busy)."""
    lock_path = Path("/tmp/mlcloud-test-opt-ml.lock")  # one per machine on purpose
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield "another test run holds /opt/ml"
            return
        if os.geteuid() != 0 or SAGEMAKER_ROOT.exists() or not _port_free(SAGEMAKER_PORT):
            yield "needs root, no existing /opt/ml and a free port 8080"
            return
        try:
            shutil.copytree(iris_dir, SAGEMAKER_ROOT / "model")
            for path in (SAGEMAKER_ROOT, *SAGEMAKER_ROOT.rglob("*")):
                path.chmod(0o700 if path.is_dir() else 0o600)
            yield None
        finally:
            shutil.rmtree(SAGEMAKER_ROOT, ignore_errors=True)


def _sagemaker_exact(tmp: Path) -> Server:
    """``docker run IMAGE serve`` as SageMaker does it: the argument, nothing in the
    environment but PATH/HOME (plus loopback-only and no-telemetry for this test machine)."""
    env = [
        f"PATH={os.environ['PATH']}",
        f"HOME={tmp / 'sagemaker-home'}",
        f"PYTHONPATH={REPO}",
        "MLCLOUD_SERVE_HOST=127.0.0.1",  # the test machine: loopback only
        "BENTOML_DO_NOT_TRACK=True",  # no telemetry from a test
    ]
    argv = ["env", "-i", *env, sys.executable, "-m", "serving.entrypoint", "serve"]
    return Server(argv, {}, SAGEMAKER_PORT, tmp / "server-sagemaker-exact.log", REPO)


@pytest.fixture(scope="session")
def farm(iris_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """Every server of this directory, started together so their start-ups overlap
    (each ``bentoml serve`` costs seconds of CPU on a 2-core box), and stopped for sure.

    * local: ``bentoml serve`` with MLCLOUD_SERVE_MODEL and a small body limit;
    * vertex: the AIP_* variables, AIP_STORAGE_URI a gs:// URI served by a GCS fake;
    * azureml: AZUREML_MODEL_DIR holding the model one level down, as Azure ML mounts it;
    * sagemaker: the Bento built by ``build_image`` (model baked in), started like the image:
      BENTO_PATH + ``python -m serving.entrypoint serve`` on SAGEMAKER_BIND_TO_PORT;
    * sagemaker_exact: ``serve``, port 8080, /opt/ml/model and nothing else (when possible).
    """
    tmp = tmp_path_factory.mktemp("farm")
    farm = Farm(bentoml_home=tmp / "bentoml-store")
    with contextlib.ExitStack() as stack:
        farm.gcs = FakeGcs().start()
        stack.callback(farm.gcs.stop)
        farm.vertex_uri = farm.gcs.storage.put_tree("cloud-ai-platform-1", "iris-1234", iris_dir)
        skipped = stack.enter_context(_sagemaker_mount(iris_dir))
        if skipped:
            farm.skipped["sagemaker_exact"] = skipped
        yield from _farm(farm, tmp, iris_dir)


def _farm(farm: Farm, tmp: Path, iris_dir: Path) -> Iterator[Farm]:
    try:
        if "sagemaker_exact" not in farm.skipped:
            farm.servers["sagemaker_exact"] = _sagemaker_exact(tmp)
        farm.servers["local"] = start_server(
            tmp,
            {"MLCLOUD_SERVE_MODEL": str(iris_dir), "MLCLOUD_SERVE_MAX_BODY": str(LOCAL_MAX_BODY)},
        )
        vertex_env = {
            "AIP_HEALTH_ROUTE": VERTEX_BASE,
            "AIP_PREDICT_ROUTE": f"{VERTEX_BASE}:predict",
            "AIP_STORAGE_URI": farm.vertex_uri,  # no /gcs on prediction nodes: downloaded
            "AIP_MODE": "PREDICTION",
            "STORAGE_EMULATOR_HOST": farm.gcs.url if farm.gcs else "",
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
