"""Contract resolution, the container entrypoint's command, the micro-batcher, the manifest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from mlcloud import modeldir
from mlcloud.errors import ConfigError, ModelError
from serving.batching import MicroBatcher, Overloaded
from serving.contracts import ContractError, locate_model_dir, resolve
from serving.entrypoint import command


def test_local_default() -> None:
    c = resolve({"MLCLOUD_SERVE_MODEL": "/m"})
    assert (c.name, c.model_dir, c.port, c.predict_routes) == (
        "local",
        Path("/m"),
        None,
        ("/predict",),
    )


def test_sagemaker() -> None:
    c = resolve({"MLCLOUD_SERVING_CONTRACT": "sagemaker"})
    assert c.model_dir == Path("/opt/ml/model") and c.port == 8080
    assert c.predict_routes == ("/invocations",) and c.ready_routes == ("/ping",)
    assert resolve({"SAGEMAKER_BIND_TO_PORT": "9000"}).port == 9000  # detected from the port


def test_vertex_routes_and_gcs_uri() -> None:
    env = {
        "AIP_HTTP_PORT": "7080",
        "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
        "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
        "AIP_STORAGE_URI": "gs://bucket/models/iris",
    }
    c = resolve(env)
    assert c.name == "vertex" and c.port == 7080
    # no /gcs mount on prediction nodes: the entrypoint downloads it (test_cloud_start.py)
    assert c.model_dir is None and c.model_uri == "gs://bucket/models/iris"
    assert c.predict_routes == ("/v1/endpoints/1/deployedModels/2:predict",)
    assert c.ready_routes == ("/v1/endpoints/1/deployedModels/2",)
    with pytest.raises(ContractError, match="must start with '/'"):
        resolve({**env, "AIP_PREDICT_ROUTE": "predict"})


def test_azureml() -> None:
    c = resolve({"AZUREML_MODEL_DIR": "/var/azureml-app/azureml-models/iris/1"})
    assert c.name == "azureml" and c.port == 5001
    assert (c.predict_routes, c.ready_routes, c.live_routes) == (("/score",), ("/health",), ("/",))
    config = c.azureml_inference_config()
    assert config["scoring_route"] == {"port": 5001, "path": "/score"}


def test_invalid_settings() -> None:
    with pytest.raises(ContractError, match="must be one of"):
        resolve({"MLCLOUD_SERVING_CONTRACT": "heroku"})
    with pytest.raises(ContractError, match="not a port") as err:
        resolve({"AIP_HTTP_PORT": "http"})
    assert isinstance(err.value, ConfigError)  # an environment problem, in mlcloud's tree
    assert resolve({}).model_dir is None  # importable for `bentoml build`; fatal at load


def test_entrypoint_reports_a_bad_environment_in_one_line() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLCLOUD_SERVING_CONTRACT": "heroku"}
    out = subprocess.run([sys.executable, "-m", "serving.entrypoint", "serve"], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("mlcloud serving: error: MLCLOUD_SERVING_CONTRACT='heroku'")


def test_locate_model_dir_one_level_down(tmp_path: Path) -> None:
    (tmp_path / "iris").mkdir()
    (tmp_path / "iris" / modeldir.MANIFEST).write_text("{}")
    assert locate_model_dir(tmp_path) == tmp_path / "iris"
    assert locate_model_dir(tmp_path / "iris") == tmp_path / "iris"


def test_entrypoint_command() -> None:
    argv = command({"SAGEMAKER_BIND_TO_PORT": "8080", "MLCLOUD_SERVE_MODEL": "/m"})
    assert argv[:3] == ["bentoml", "serve", "serving.service:MlcloudService"]
    assert argv[3:] == ["--host", "0.0.0.0", "--port", "8080"]
    bento = command({"BENTO_PATH": "/home/bentoml/bento", "MLCLOUD_SERVE_HOST": "127.0.0.1"})
    assert bento[2] == "/home/bentoml/bento" and bento[-3:] == ["127.0.0.1", "--port", "3000"]


def test_signature_inference_and_checks(tmp_path: Path) -> None:
    assert modeldir.infer_signature([[1.0, 2.0]]) == {
        "inputs": {"shape": [-1, 2], "dtype": "float64"}
    }
    assert modeldir.infer_signature([[1, 2], [3, 4]])["inputs"]["dtype"] == "int64"  # type: ignore[index]
    assert modeldir.infer_signature([{"a": 1}]) is None
    with pytest.raises(modeldir.ModelDirError, match="dtype must be one of"):
        modeldir.check_signature({"inputs": {"dtype": "complex"}})
    with pytest.raises(modeldir.ModelDirError, match="shape must be"):
        modeldir.check_signature({"inputs": {"shape": [0, 3]}})
    with pytest.raises(ModelError, match="framework must be one of"):  # saving, too
        modeldir.save(None, "tensorflow", tmp_path / "m")


def test_micro_batcher_stacks_waiting_requests_and_splits_answers() -> None:
    sizes: list[int] = []

    def run(batch: np.ndarray) -> list[float]:
        return (batch.sum(axis=1)).tolist()

    async def main() -> list[list[float]]:
        batcher = MicroBatcher(run, max_queue=64, on_batch=sizes.append)
        try:
            requests = [np.full((1 + i % 3, 2), float(i)) for i in range(20)]
            return await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    for i, rows in enumerate(results):
        assert rows == [2.0 * i] * (1 + i % 3)
    assert sum(sizes) == 20 and max(sizes) > 1  # batched, and nothing lost


def test_micro_batcher_sheds_load_beyond_its_queue() -> None:
    async def main() -> list[object]:
        batcher = MicroBatcher(lambda b: b.tolist(), max_queue=2, inline=True)
        try:
            calls = [batcher.submit(np.zeros((1, 1))) for _ in range(5)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert sum(isinstance(r, Overloaded) for r in results) >= 1
    assert sum(r == [[0.0]] for r in results) >= 2
