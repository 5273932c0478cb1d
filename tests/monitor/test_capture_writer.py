"""The capture writer (serving/capture.py) and the window reader, on real files and threads."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcloud.errors import SpecError
from mlcloud.monitor.capture import add_labels, from_table, parse_labels, to_window
from mlcloud.specs import Deployment
from providers.local.capture import read_dir
from serving.capture import Capture, Settings

ROW = [5.1, 3.5, 1.4, 0.2]


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(directory=tmp_path / "cap", flush_s=0.02, **kw)  # type: ignore[arg-type]


def _records(directory: Path) -> list[dict[str, Any]]:
    found = read_dir(directory, 0, time.time() + 1)
    return found.records if found.table is None else found.table.to_pylist()


def _files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cap").glob("capture-*.jsonl"))


def test_records_are_written_off_the_request_and_read_back(tmp_path: Path) -> None:
    cap = Capture(_settings(tmp_path), "v3")
    started = time.time()
    for i in range(50):
        cap.offer(f"r{i}", [ROW], [i % 3])
    cap.close()
    found = read_dir(tmp_path / "cap", started - 1, time.time() + 1)
    assert found.table is not None, "read in bulk by pyarrow"
    records = found.table.to_pylist()
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(50)]
    assert {r["version"] for r in records} == {"v3"} and found.dropped == 0


def test_sampling_keeps_about_the_fraction(tmp_path: Path) -> None:
    cap = Capture(_settings(tmp_path, sample=0.1), "v1")
    for i in range(5000):
        cap.offer(str(i), [ROW], [0])
    cap.close()
    assert 350 < cap.written < 650


def test_a_full_queue_drops_and_counts_without_waiting(tmp_path: Path) -> None:
    cap = Capture(Settings(directory=tmp_path / "cap", queue_size=10, flush_s=5.0), "v1")
    started = time.perf_counter()
    for i in range(1000):
        cap.offer(str(i), [ROW], [0])
    assert time.perf_counter() - started < 0.5  # never waited for the writer (asleep 5 s)
    assert cap.dropped == 990
    cap.close()
    assert cap.written == 10
    stats = json.loads(next((tmp_path / "cap").glob("stats-*.json")).read_text())
    assert stats == {"written": 10, "dropped": 990}
    assert read_dir(tmp_path / "cap", 0, time.time() + 1).dropped == 990


def test_rotation_by_size_and_the_cap(tmp_path: Path) -> None:
    kb = 1024 / (1024 * 1024)
    settings = Settings(
        directory=tmp_path / "cap", rotate_bytes=4096, max_bytes=20 * 1024, flush_s=0.01
    )
    cap = Capture(settings, "v1")
    for i in range(400):  # ~100 KB in all
        cap.offer(f"{i:04d}", [ROW] * 3, [0, 1, 2])
        if i % 20 == 0:
            time.sleep(0.03)
    cap.close()
    files = _files(tmp_path)
    assert all(p.stat().st_size <= 4096 for p in files)
    assert sum(p.stat().st_size for p in files) <= 20 * 1024
    kept = _records(tmp_path / "cap")
    assert kept[-1]["request_id"] == "0399", "the newest records are kept"
    assert kept[0]["request_id"] > "0000", "the oldest files were deleted"
    assert kb > 0


def test_rotation_by_age(tmp_path: Path) -> None:
    cap = Capture(_settings(tmp_path, rotate_s=0.05), "v1")
    for i in range(3):
        cap.offer(str(i), [ROW], [0])
        time.sleep(0.12)
    cap.close()
    assert len(_files(tmp_path)) == 3


def test_an_answer_json_cannot_hold_is_dropped_and_counted(tmp_path: Path) -> None:
    cap = Capture(_settings(tmp_path), "v1")
    cap.offer("a", [ROW], [object()])
    cap.offer("b", [ROW], [np.int64(2)])  # numpy scalars are fine
    cap.close()
    assert (cap.written, cap.dropped) == (1, 1)


def test_settings_from_env(tmp_path: Path) -> None:
    assert Settings.from_env({}) is None
    s = Settings.from_env({"MLCLOUD_CAPTURE_DIR": str(tmp_path), "MLCLOUD_CAPTURE_SAMPLE": "0.5",
                           "MLCLOUD_CAPTURE_MAX_MB": "16"})  # fmt: skip
    assert (
        s is not None and s.sample == 0.5 and s.max_bytes == 16 << 20 and s.rotate_bytes == 2 << 20
    )
    with pytest.raises(ValueError, match="between 0 and 1"):
        Settings.from_env({"MLCLOUD_CAPTURE_DIR": "x", "MLCLOUD_CAPTURE_SAMPLE": "2"})


def test_window_of_named_features_and_labels() -> None:
    records = [
        {"ts": 1.0, "request_id": "a", "version": "v1",
         "instances": [{"x": 1, "color": "red"}, {"x": 2, "color": "blue"}],
         "predictions": [0, 1]},
        {"ts": 2.0, "request_id": "b", "version": "v2",
         "instances": [{"x": 3}], "predictions": [1]},
    ]  # fmt: skip
    window = add_labels(to_window(records), {"a": [0, 0], "b": 1})
    assert window.feature_names == ["x", "color"]
    assert window.features.dtype == object and window.features[2, 1] is None
    assert list(window.labels) == [0, 0, 1] and window.labelled.all()
    assert list(window.versions) == ["v1", "v1", "v2"]
    numeric = to_window([{"ts": 1, "instances": [[1, 2], [3]], "predictions": [0, 1]}], ["a", "b"])
    assert numeric.features.dtype == np.float64 and np.isnan(numeric.features[1, 1])
    assert numeric.feature_names == ["a", "b"]
    assert len(to_window([])) == 0


def test_labels_files() -> None:
    assert parse_labels("request_id,label\na,1\nb,cat\nc,0.5\n", "csv") == {
        "a": 1, "b": "cat", "c": 0.5,
    }  # fmt: skip
    assert parse_labels('{"request_id": "a", "label": [1, 2]}\n', "jsonl") == {"a": [1, 2]}
    with pytest.raises(SpecError, match="header"):
        parse_labels("id,label\na,1\n", "csv")
    with pytest.raises(SpecError, match="line 1"):
        parse_labels("nope\n", "jsonl")


def test_deployment_capture_and_monitor_fields() -> None:
    d = Deployment(name="a", model="m", capture={"sample": 0.5}, monitor={"every": "2h",
                   "on_drift": {"pipeline": "retrain"}})  # fmt: skip
    assert d.capture is not None and d.capture.max_mb == 512
    assert d.monitor is not None and d.monitor.every_seconds == 7200
    assert Deployment(name="a", model="m").capture is None  # off by default
    with pytest.raises(Exception, match="sample"):
        Deployment(name="a", model="m", capture={"sample": 0})
    with pytest.raises(Exception, match="MLCLOUD_CAPTURE_DIR"):
        Deployment(name="a", model="m", env={"MLCLOUD_CAPTURE_DIR": "/tmp"})


def test_bulk_and_line_by_line_reads_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.local import capture as local

    cap = Capture(_settings(tmp_path), "v1")
    for i in range(30):
        cap.offer(f"r{i}", [[float(i), 1.0, 2.0, 3.0]] * (1 + i % 3), [i % 3] * (1 + i % 3))
    cap.close()
    (tmp_path / "cap" / "capture-0000000000001-9-000001.jsonl").write_bytes(b'{"ts": 1')  # torn
    found = read_dir(tmp_path / "cap", 0, time.time() + 1)
    fast = from_table(found.table, ["a", "b", "c", "d"], found.dropped)
    monkeypatch.setattr(local, "_arrow", lambda *a: None)
    slow = to_window(read_dir(tmp_path / "cap", 0, time.time() + 1).records, ["a", "b", "c", "d"])
    assert fast is not None and len(fast) == len(slow) == sum(1 + i % 3 for i in range(30))
    np.testing.assert_array_equal(fast.features, slow.features)
    np.testing.assert_array_equal(fast.predictions, slow.predictions)
    assert list(fast.request_ids) == list(slow.request_ids)
    assert list(fast.timestamps) == list(slow.timestamps)
    assert fast.feature_names == ["a", "b", "c", "d"]


def test_ray_refuses_capture_at_plan_time() -> None:
    from mlcloud.errors import UnsupportedFeature
    from providers.ray.endpoint_plan import _refuse

    with pytest.raises(UnsupportedFeature, match="request capture"):
        _refuse(Deployment(name="a", model="m", capture={"sample": 0.5}), "ray")


def test_an_empty_window_read_in_bulk_is_an_empty_window() -> None:
    """A capture file with nothing yet in the window came back as a 0-row Table, and shaping it
    raised "cannot reshape array of size 0" (a monitor check right after a deploy)."""
    import pyarrow as pa

    empty = pa.table({
        "ts": pa.array([], pa.float64()), "request_id": pa.array([], pa.string()),
        "version": pa.array([], pa.string()),
        "instances": pa.array([], pa.list_(pa.list_(pa.float64()))),
        "predictions": pa.array([], pa.list_(pa.int64())),
    })  # fmt: skip
    assert from_table(empty, None, 0) is None  # the general path then: an empty window
    assert len(to_window(empty.to_pylist(), None, 0)) == 0
