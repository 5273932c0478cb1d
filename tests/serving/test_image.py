"""``build_image``: a real, offline ``bentoml build``; the SageMaker test serves its Bento."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from mlcloud import modeldir
from mlcloud.errors import ModelError, SpecError
from mlcloud.modeldir import ModelDirError
from serving.contracts import BUNDLED_MODEL
from serving.image import ImageResult, build_image, stage_model
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
    assert any(r.startswith("google-cloud-storage") for r in reqs)  # Vertex model download


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
    users = [line for line in dockerfile.splitlines() if line.startswith("USER")]
    assert users[-1] == "USER root"  # the entrypoint chooses per contract (issue 10, item 4)


def test_bad_tag_and_tampered_model_fail_before_building(tmp_path: Path, iris_dir: Path) -> None:
    with pytest.raises(SpecError, match="name\\[:version\\]"):
        build_image(iris_dir, "Bad Tag!", bentoml_home=tmp_path)
    shutil.copytree(iris_dir, tmp_path / "m")
    (tmp_path / "m" / "model.skops").write_bytes(b"not the model")
    with pytest.raises(ModelDirError, match="does not match") as err:
        build_image(tmp_path / "m", "x", bentoml_home=tmp_path)
    assert isinstance(err.value, ModelError) and not isinstance(err.value, ValueError)


def test_image_holds_exactly_the_manifests_regular_files(tmp_path: Path, iris_dir: Path) -> None:
    """Before: a symlink in the model dir put the host file it points to into the Bento, and
    the digest label did not change. Now a symlink is refused, an unlisted file stays out, and
    the label is the digest of exactly the files copied."""
    model = tmp_path / "model"
    shutil.copytree(iris_dir, model)
    host_file = tmp_path / "host-secret"
    host_file.write_text("HOST-SECRET-CONTENT")
    (model / "leak.txt").symlink_to(host_file)
    with pytest.raises(ModelDirError, match=r"symlink, leak\.txt ->") as err:
        build_image(model, "leaky", bentoml_home=tmp_path / "bentoml", containerize=False)
    assert not (tmp_path / "bentoml").exists(), "refused before anything was built"
    assert err.value.hint
    (model / "leak.txt").unlink()
    (model / "notes.txt").write_text("UNLISTED-NOTES-CONTENT")
    home = tmp_path / "bentoml"
    result = build_image(model, "leaky", bentoml_home=home, containerize=False)
    name, version = result.bento_tag.split(":")
    bento = home / "bentos" / name / version
    shipped = bento / "src" / BUNDLED_MODEL
    files = sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file())
    manifest = json.loads((iris_dir / modeldir.MANIFEST).read_text())
    assert files == sorted([*manifest["files"], modeldir.MANIFEST])
    label = yaml.safe_load((bento / "bento.yaml").read_text())["labels"]["mlcloud.model-sha256"]
    assert label == modeldir.digest(shipped) == modeldir.digest(iris_dir)
    assert version == label[:12]
    everything = b"".join(p.read_bytes() for p in bento.rglob("*") if p.is_file())
    assert b"HOST-SECRET-CONTENT" not in everything and b"UNLISTED-NOTES-CONTENT" not in everything


def test_staging_refuses_a_listed_path_that_is_not_a_regular_file(
    tmp_path: Path, iris_dir: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(iris_dir, model)
    manifest = json.loads((model / modeldir.MANIFEST).read_text())
    (model / "sub").mkdir()
    manifest["files"]["sub"] = "0" * 64  # a directory listed as a file
    (model / modeldir.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="sub is not a regular file"):
        stage_model(model, tmp_path / "staged")
    manifest["files"].pop("sub")
    manifest["files"]["../outside"] = "0" * 64
    (model / modeldir.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="outside the model dir"):
        stage_model(model, tmp_path / "staged2")


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
