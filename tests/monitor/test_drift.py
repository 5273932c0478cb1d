"""Drift per feature and for the predictions (issue 13, item 3): the known-shift data set (a
0.3 sd mean shift on one of four features is flagged, the other three are not; a no-shift
control raises nothing), in both regimes of the sample-size rule, with fixed seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlcloud.errors import SpecError
from mlcloud.monitor import drift, profile
from mlcloud.monitor.profile import Baseline
from tests.monitor.helpers import gaussian_model, shifted, window


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Baseline:
    return profile.load(gaussian_model(tmp_path_factory.mktemp("m") / "model"))


def _model(base: Baseline) -> object:
    import skops.io as sio

    from mlcloud.modeldir import read_manifest  # the same model the baseline came with

    root = Path(base.source)
    entry = read_manifest(root)["entry"]
    return sio.load(
        root / entry["file"], trusted=sio.get_untrusted_types(file=root / entry["file"])
    )


@pytest.mark.parametrize(("rows", "method"), [(5000, "wasserstein"), (600, "ks")])
def test_a_03_sd_shift_on_one_of_four_features_is_flagged_alone(
    base: Baseline, rows: int, method: str
) -> None:
    result = drift.compare(base, window(shifted(rows, 0.3)), since=0, until=3600)
    assert result.drifted == ["f2"]
    assert {f.method for f in result.features} == {method}
    f2 = next(f for f in result.features if f.name == "f2")
    if method == "wasserstein":
        assert f2.statistic == pytest.approx(0.3, abs=0.05) and f2.p_value is None
    else:
        assert f2.p_adjusted is not None and f2.p_adjusted < 0.05 and f2.p_value <= f2.p_adjusted


@pytest.mark.parametrize("rows", [5000, 600])
def test_no_shift_raises_no_alarm(base: Baseline, rows: int) -> None:
    result = drift.compare(base, window(shifted(rows, 0.0)), since=0, until=3600)
    assert result.drifted == []
    assert all(f.psi < 0.1 for f in result.features)


def test_the_rule_switches_on_the_smaller_sample(base: Baseline) -> None:
    small = drift.compare(base, window(shifted(1000, 0.0)), since=0, until=1)
    large = drift.compare(base, window(shifted(1001, 0.0)), since=0, until=1)
    assert {f.method for f in small.features} == {"ks"}
    assert {f.method for f in large.features} == {"wasserstein"}


def test_corrections_thresholds_and_methods_per_feature(base: Baseline) -> None:
    x = shifted(600, 0.3)
    bonferroni = drift.compare(base, window(x), since=0, until=1,
                               config=drift.DriftConfig(correction="bonferroni"))  # fmt: skip
    raw = drift.compare(base, window(x), since=0, until=1,
                        config=drift.DriftConfig(correction="none"))  # fmt: skip
    for b, r in zip(bonferroni.features, raw.features, strict=True):
        assert b.p_adjusted == pytest.approx(min(1.0, 4 * (r.p_value or 0)))
    # a threshold per feature: f2 allowed to move 0.5 sd; f0 judged by PSI instead
    config = drift.DriftConfig(thresholds={"f2": 0.5}, methods={"*": "wasserstein", "f0": "psi"})
    result = drift.compare(base, window(shifted(5000, 0.3)), since=0, until=1, config=config)
    by = {f.name: f for f in result.features}
    assert by["f2"].threshold == 0.5 and not by["f2"].drifted
    assert by["f0"].method == "psi" and by["f0"].threshold == 0.2 and not by["f0"].drifted
    with pytest.raises(SpecError, match="must be one of"):
        drift.DriftConfig(methods={"f0": "t-test"})
    with pytest.raises(SpecError, match="f1 is numeric"):
        drift.compare(base, window(x), since=0, until=1,
                      config=drift.DriftConfig(methods={"f1": "chi2"}))  # fmt: skip


def test_the_prediction_distribution_drifts_with_the_inputs(base: Baseline) -> None:
    model = _model(base)
    x = shifted(3000, 0.0)
    calm = drift.compare(base, window(x, model.predict(x)), since=0, until=1)  # type: ignore[attr-defined]
    assert calm.prediction is not None and not calm.prediction.drifted
    moved = shifted(3000, 1.5, column=0)
    result = drift.compare(base, window(moved, model.predict(moved)), since=0, until=1)  # type: ignore[attr-defined]
    assert result.prediction is not None and result.prediction.kind == "categorical"
    assert result.prediction.method == "jensenshannon" and result.prediction.drifted
    assert result.drifted == ["f0"]  # the prediction is reported apart from the features


def test_categorical_features_missing_values_and_unseen_categories(tmp_path: Path) -> None:
    from mlcloud import modelprofile

    rng = np.random.default_rng(7)
    colours = rng.choice(["red", "green", "blue"], size=800, p=[0.5, 0.3, 0.2])
    sizes = rng.normal(size=800)
    modelprofile.write(tmp_path, {"colour": colours, "size": sizes})
    _manifest(tmp_path)
    base = profile.load(tmp_path)
    cur_colours = rng.choice(["red", "green", "blue", "purple"], size=400, p=[0.3, 0.3, 0.2, 0.2])
    cur_sizes = rng.normal(size=400)
    cur_sizes[:100] = np.nan
    features = np.empty((400, 2), dtype=object)
    features[:, 0], features[:, 1] = cur_colours, cur_sizes
    result = drift.compare(base, window(features, names=["colour", "size"]), since=0, until=1)
    by = {f.name: f for f in result.features}
    assert by["colour"].method == "chi2" and by["colour"].drifted
    assert "purple" in by["colour"].chart["labels"]
    assert by["size"].method == "ks" and not by["size"].drifted
    assert by["size"].missing_current == pytest.approx(0.25) and by["size"].n_current == 300


def test_columns_match_by_name_else_by_position(base: Baseline) -> None:
    x = shifted(600, 0.0)
    reordered = drift.compare(base, window(x[:, ::-1], names=["f3", "f2", "f1", "f0"]),
                              since=0, until=1)  # fmt: skip
    assert not reordered.notes and reordered.drifted == []
    unnamed = drift.compare(base, window(x, names=["0", "1", "2", "3"]), since=0, until=1)
    assert "by position" in unnamed.notes[0]
    with pytest.raises(SpecError, match="nothing to compare"):
        drift.compare(base, window(x[:, :3], names=["a", "b", "c"]), since=0, until=1)


def test_the_json_form_is_standard_json(base: Baseline) -> None:
    import json

    empty = drift.compare(base, window(np.empty((0, 4))), since=0, until=60)
    text = json.dumps(empty.to_dict(), allow_nan=False)  # NaN statistics become null
    assert json.loads(text)["features"][0]["statistic"] is None
    assert empty.drifted == [] and sum(empty.volume["counts"]) == 0


def _manifest(root: Path) -> None:
    from mlcloud import modeldir

    modeldir.write_manifest(root, "custom", {"predictor": "m:P"})


def test_a_few_wild_values_do_not_squash_the_chart(base: Baseline) -> None:
    x = shifted(5000, 0.0)
    x[:4, 1] = 1e9  # a broken client's rows
    result = drift.compare(base, window(x), since=0, until=1)
    chart = result.features[1].chart
    assert chart["edges"][-1] < 10 and sum(chart["current"]) == pytest.approx(1.0)
    assert chart["current"][-1] > 0  # counted in the last bin, not dropped
