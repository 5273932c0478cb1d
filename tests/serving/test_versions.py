"""Issue 10, item 5: the libraries that wrote a model are recorded, pinned in its image, and
checked when it loads (a warning for a different version, a refusal for another major)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
from pathlib import Path

import pytest

from mlcloud import modeldir, runtime
from mlcloud.cli import _print_endpoint
from mlcloud.modeldir import ModelDirError
from mlcloud.records import EndpointRecord, EndpointState
from serving.image import bentofile, requirements
from serving.loaders import load_model
from tests.serving.conftest import IRIS_ROW, iris_model

SKLEARN = importlib.metadata.version("scikit-learn")


def _with_versions(iris_dir: Path, dest: Path, **versions: str) -> Path:
    shutil.copytree(iris_dir, dest)
    path = dest / modeldir.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["versions"].update(versions)
    path.write_text(json.dumps(manifest))
    return dest


def test_save_model_records_library_versions(tmp_path: Path) -> None:
    root = runtime.save_model(iris_model(), "sklearn", tmp_path / "m", example=[IRIS_ROW])
    versions = modeldir.read_manifest(root)["versions"]
    assert versions["python"] == platform.python_version()
    assert versions["scikit-learn"] == SKLEARN
    assert versions["numpy"] == importlib.metadata.version("numpy")
    assert modeldir.read_manifest(root)["entry"]["format"] in versions  # skops or joblib
    assert load_model(root).version_warnings == []  # same libraries: nothing to say


def test_image_pins_what_the_model_recorded() -> None:
    recorded = {"python": "3.10.14", "scikit-learn": "1.4.2", "numpy": "1.26.4", "scipy": "1.13"}
    reqs = requirements("sklearn", recorded)
    assert "scikit-learn==1.4.2" in reqs and "numpy==1.26.4" in reqs
    assert not any(r.startswith("scipy") for r in reqs)  # only what the image installs
    spec = bentofile("m", "sklearn", "d" * 64, recorded)
    assert spec["docker"]["python_version"] == "3.10"  # type: ignore[index]


def test_version_mismatch_warns_and_another_major_is_refused(
    iris_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    major, minor = (int(p) for p in SKLEARN.split(".")[:2])
    older = _with_versions(iris_dir, tmp_path / "older", **{"scikit-learn": f"{major}.{minor}.99"})
    predictor = load_model(older)  # a different version still loads, with a warning
    assert predictor.version_warnings == [
        f"model written with scikit-learn {major}.{minor}.99, loaded with {SKLEARN}"
    ]
    other = _with_versions(iris_dir, tmp_path / "other", **{"scikit-learn": f"{major + 1}.0.0"})
    with pytest.raises(ModelDirError, match="another major version") as err:
        load_model(other)
    assert err.value.hint and f"scikit-learn=={major + 1}.0.0" in err.value.hint
    # `endpoints show` of a local endpoint serving it says so
    record = EndpointRecord("iris", "local", "local", EndpointState.READY, model=str(older))
    _print_endpoint(record, "text")
    out = capsys.readouterr().out
    assert f"warning:      model written with scikit-learn {major}.{minor}.99" in out
