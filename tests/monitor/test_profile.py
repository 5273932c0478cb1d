"""The training baseline: ``runtime.save_model(..., reference=X)`` stores a profile listed in
the manifest with its sha256 (issue 13, item 1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlcloud import modeldir, modelprofile, runtime
from mlcloud.errors import NotFoundLocally
from mlcloud.monitor import profile
from tests.monitor.helpers import gaussian_model


def _lr() -> object:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(50, 2))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


def test_the_profile_is_listed_in_the_manifest_and_verified(tmp_path: Path) -> None:
    root = gaussian_model(tmp_path / "m", rows=12_000)
    manifest = modeldir.verify(root)
    for name in (modelprofile.PROFILE, modelprofile.SAMPLE):
        assert manifest["files"][name] == modeldir.sha256_file(root / name)
    base = profile.load(root)
    assert base.feature_names == ["f0", "f1", "f2", "f3"]
    assert base.sample.shape == (10_000, 4)  # bounded; the predicted labels are counted instead
    f0 = base.feature("f0")
    assert f0["kind"] == "numeric" and f0["count"] == 12_000 and f0["missing"] == 0
    assert len(f0["quantiles"]) == 101 and abs(f0["quantiles"][50]) < 0.05
    assert sum(f0["hist"]["counts"]) == 12_000
    found = base.prediction()
    assert found is not None and found[1]["kind"] == "categorical"  # the model's own labels
    assert set(found[1]["categories"]) == {"0", "1"}


def test_categorical_missing_and_dataframe_columns(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "colour": ["red", "blue", None, "red"] * 25,
            "size": [1.0, np.nan, 3.5, 2.25] * 25,
            "flag": [0, 1, 1, 1] * 25,
        }
    )
    written = modelprofile.write(tmp_path, frame, target=[0, 1] * 50)
    by_name = {f["name"]: f for f in written["features"]}
    assert by_name["colour"] == {
        "name": "colour", "kind": "categorical", "count": 100, "missing": 25,
        "missing_rate": 0.25, "categories": {"red": 50, "blue": 25},
    }  # fmt: skip
    assert by_name["size"]["kind"] == "categorical"  # 3 distinct values: compared as categories
    assert by_name["size"]["missing_rate"] == 0.25
    assert by_name["flag"]["categories"] == {"1": 75, "0": 25}
    assert written["target"]["categories"] == {"0": 50, "1": 50}
    assert written["sample"]["columns"] == []  # nothing numeric to sample


def test_save_model_without_reference_writes_no_profile(tmp_path: Path) -> None:
    root = runtime.save_model(_lr(), "sklearn", tmp_path / "m")
    assert not (root / modelprofile.PROFILE).exists()
    with pytest.raises(NotFoundLocally, match="no training baseline") as e:
        profile.load(root)
    assert "reference=" in (e.value.hint or "")


def test_a_modified_profile_is_refused(tmp_path: Path) -> None:
    root = gaussian_model(tmp_path / "m", rows=200)
    data = json.loads((root / modelprofile.PROFILE).read_text())
    data["features"][0]["quantiles"][50] = 99.0
    (root / modelprofile.PROFILE).write_text(json.dumps(data))
    with pytest.raises(modeldir.ModelDirError, match="refusing a modified baseline"):
        profile.load(root)


def test_a_reference_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(modelprofile.ProfileError, match="2-D"):
        modelprofile.write(tmp_path, np.zeros((2, 2, 2)))
    with pytest.raises(modelprofile.ProfileError, match="target has 3 rows"):
        modelprofile.write(tmp_path, np.zeros((4, 2)), target=[1, 2, 3])


def test_the_vendored_module_imports_only_the_standard_library() -> None:
    code = (
        "import sys; import mlcloud.modelprofile, mlcloud.runtime; "
        "bad = [m for m in ('numpy', 'pandas', 'scipy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_category_keys_agree_between_training_and_serving() -> None:
    keys = {modelprofile.category_key(v) for v in (1, 1.0, np.int64(1), np.float32(1.0))}
    assert keys == {"1"}
    assert modelprofile.category_key(float("nan")) is None
    assert modelprofile.category_key(np.True_) == modelprofile.category_key(True) == "1"
    assert modelprofile.category_key(2.5) == "2.5"
