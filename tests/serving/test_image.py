"""``build_image``: a real, offline ``bentoml build``; the SageMaker test serves its Bento."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mlcloud.errors import ModelError, SpecError
from mlcloud.modeldir import ModelDirError
from serving.image import ImageResult, build_image
from tests.conftest import MLCLOUD
from tests.serving.conftest import Farm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(farm: Farm) -> tuple[ImageResult, Path]:
    # Built once by the farm (its SageMaker server runs this Bento: see test_contracts_http).
    assert farm.bento is not None
    return farm.bento, farm.bentoml_home


def test_bento_contents(built: tuple[ImageResult, Path], iris_dir: Path) -> None:
    result, home = built
    name, version = result.bento_tag.split(":")
    assert name == "mlcloud-iris" and len(version) == 12  # versioned by the model digest
    bento = home / "bentos" / name / version
    assert (bento / "src/serving/service.py").is_file()
    assert (bento / "src/mlcloud/modeldir.py").is_file()
    manifest = json.loads((bento / "src/mlcloud_model/mlcloud-model.yaml").read_text())
    assert manifest["files"] == json.loads((iris_dir / "mlcloud-model.yaml").read_text())["files"]
    reqs = (bento / "env/python/requirements.txt").read_text().split()
    assert f"scikit-learn=={importlib.metadata.version('scikit-learn')}" in reqs
    assert not any(r.startswith("torch") for r in reqs)  # only what a sklearn model needs


def test_no_engine_means_a_bento_and_instructions(built: tuple[ImageResult, Path]) -> None:
    result, _ = built
    if result.image is None:  # docker here has no daemon
        assert "no container image" in result.message
        assert any("bentoml containerize" in c for c in result.commands)
    else:
        assert result.engine in ("docker", "podman")


def test_dockerfile_uses_the_contract_entrypoint(built: tuple[ImageResult, Path]) -> None:
    # The Dockerfile BentoML generated into the Bento from our template (no engine needed).
    result, home = built
    name, version = result.bento_tag.split(":")
    dockerfile = (home / "bentos" / name / version / "env/docker/Dockerfile").read_text()
    entrypoints = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    assert entrypoints[-1] == 'ENTRYPOINT ["python", "-m", "serving.entrypoint"]'
    assert "ENV PYTHONPATH=/home/bentoml/bento/src" in dockerfile


def test_bad_tag_and_tampered_model_fail_before_building(tmp_path: Path, iris_dir: Path) -> None:
    with pytest.raises(SpecError, match="name\\[:version\\]"):
        build_image(iris_dir, "Bad Tag!", bentoml_home=tmp_path)
    shutil.copytree(iris_dir, tmp_path / "m")
    (tmp_path / "m" / "model.skops").write_bytes(b"not the model")
    with pytest.raises(ModelDirError, match="does not match") as err:
        build_image(tmp_path / "m", "x", bentoml_home=tmp_path)
    assert isinstance(err.value, ModelError) and not isinstance(err.value, ValueError)


def test_cli_image_build(tmp_path: Path, iris_dir: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    run = [*MLCLOUD, "image", "build", str(iris_dir)]
    out = subprocess.run([*run, "-o", "json"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    name, version = result["bento_tag"].split(":")
    assert name == "mlcloud-serve" and len(version) == 12  # the default tag, versioned by digest
    assert (tmp_path / "bentoml" / "bentos" / name / version / "bento.yaml").is_file()
    assert result["image"] or result["commands"]  # an image, or how to build one elsewhere
    bad = subprocess.run([*run, "-t", "x:latest"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "reserved by BentoML" in bad.stderr
