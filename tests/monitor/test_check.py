"""One check of an endpoint (mlcloud.monitor.check): the baseline of the serving version or of
a registry version (``--baseline NAME:VERSION``), a canary's rows compared with its own model,
and the ground truth from ``mlcloud feedback`` turned into accuracy over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlcloud import api, runtime
from mlcloud.monitor import check, drift, report
from mlcloud.monitor.capture import write_labels
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.store import Store
from providers.local.capture import capture_dir
from tests.monitor.helpers import NAMES, gaussian_model, shifted, write_capture


@pytest.fixture
def store() -> Store:
    st = Store.open()
    yield st  # type: ignore[misc]
    st.close()


def _shifted_model(root: Path) -> Path:
    """A model trained where f2 is already 1.0 higher (its baseline says so)."""
    from sklearn.linear_model import LogisticRegression

    x = shifted(2000, 1.0, seed=3)
    y = (x[:, 0] > 0).astype(int)
    return runtime.save_model(LogisticRegression().fit(x, y), "sklearn", root, reference=x,
                              feature_names=NAMES)  # fmt: skip


def _record(store: Store, model: Path, **details: object) -> EndpointRecord:
    spec = {"name": "gauss", "model": str(model), "capture": {"sample": 1.0}}
    return store.put_endpoint(EndpointRecord(
        name="gauss", provider="local", type="local", state=EndpointState.READY,
        model=str(model), spec=spec, details=dict(details),
    ))  # fmt: skip


def test_the_baseline_is_the_serving_model_unless_a_version_is_named(
    tmp_path: Path, store: Store
) -> None:
    original = gaussian_model(tmp_path / "v1", rows=2000)
    api.register_model(str(original), "gauss")
    served = _shifted_model(tmp_path / "v2")
    _record(store, served)
    now = 1.9e9
    write_capture(capture_dir(store.home, "gauss"), shifted(500, 1.0, seed=14), [0] * 500, now - 60)

    against_served = check.check_endpoint("gauss", now=now, store=store)
    assert against_served.baseline == str(served) and against_served.drifted == []
    against_v1 = check.check_endpoint("gauss", baseline="gauss:1", now=now, store=store)
    assert against_v1.baseline == "gauss:1" and against_v1.drifted == ["f2"]


def test_a_canarys_rows_are_compared_with_its_own_model(tmp_path: Path, store: Store) -> None:
    stable = gaussian_model(tmp_path / "stable", rows=2000)
    canary = _shifted_model(tmp_path / "canary")
    versions = {"v1": {"model": str(stable)}, "v2": {"model": str(canary)}}
    _record(store, stable, versions=versions, newest="v2", traffic={"v1": 50, "v2": 50})
    now = 1.9e9
    where = capture_dir(store.home, "gauss")
    write_capture(where, shifted(300, 0.0, seed=16), [0] * 300, now - 120, version="v1")
    write_capture(where, shifted(300, 1.0, seed=14), [0] * 300, now - 60, version="v2")
    result = check.check_endpoint("gauss", now=now, store=store)
    assert result.version == "v2" and result.baseline == str(canary)
    assert result.rows == 300 and result.drifted == []  # v2's rows match v2's baseline
    assert "300 of 600 captured rows were served by version v2" in result.notes[0]


def test_feedback_labels_give_accuracy_over_time(tmp_path: Path, store: Store) -> None:
    model = gaussian_model(tmp_path / "m", rows=2000)
    _record(store, model)
    now = 1.9e9
    x = shifted(200, 0.0, seed=16)
    truth = (x[:, 0] + x[:, 1] > 0).astype(int).tolist()
    preds = [1 - t if i < 50 else t for i, t in enumerate(truth)]  # the first 50 are wrong
    write_capture(capture_dir(store.home, "gauss"), x, preds, now - 3600)
    ids = {f"q{now - 3600}-{i}": truth[i] for i in range(0, 200, 2)}  # half get a label
    write_labels(store.home, "gauss", ids)
    result = check.check_endpoint("gauss", window_s=7200, now=now, store=store)
    assert result.quality is not None and result.quality["metric"] == "accuracy"
    assert result.quality["labelled"] == 100
    assert result.quality["overall"] == pytest.approx(0.75)  # 25 of the 100 labelled are wrong
    assert any(v is not None for v in result.quality["values"])
    assert "Accuracy over time" in report.render(result)


def test_an_empty_window_is_said_not_guessed(tmp_path: Path, store: Store) -> None:
    _record(store, gaussian_model(tmp_path / "m", rows=500))
    capture_dir(store.home, "gauss").mkdir(parents=True)
    result = check.check_endpoint("gauss", now=1.9e9, store=store)
    assert result.rows == 0 and result.drifted == [] and "no captured requests" in result.notes[0]
    assert all(np.isnan(f.statistic) for f in result.features)
    assert isinstance(result, drift.DriftResult)
