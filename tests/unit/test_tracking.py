"""Collecting metrics.json into a record (providers/common/metrics.py) and reading it back
(mlcloud.tracking: job_metrics, compare_jobs)."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from mlcloud import tracking
from mlcloud.errors import NotFound, NotFoundLocally, PermissionDenied, SpecError
from mlcloud.records import JobRecord, JobState
from mlcloud.store import Store
from providers.common import metrics

GOOD = {
    "params": {"C": 1.0, "solver": "lbfgs"},
    "metrics": {
        "loss": [{"value": 2.0, "step": 0, "time": 1.0}, {"value": 0.5, "step": 1, "time": 2.0}],
        "acc": [{"value": 0.9, "step": None, "time": 3.0}],
    },
}


def _record(store: Store, job_id: str, state: JobState = JobState.RUNNING) -> JobRecord:
    now = time.time()
    job = JobRecord(job_id, "m", "local", "local", state, created_at=now, updated_at=now)
    return store.add_job(job)


@pytest.fixture
def store() -> Store:
    return Store.open()


def test_parse_validates_and_summarises() -> None:
    parsed = metrics.parse(json.dumps(GOOD).encode())
    assert metrics.summary(parsed)["metrics"]["loss"] == {
        "value": 0.5, "step": 1, "count": 2, "min": 0.5, "max": 2.0
    }  # fmt: skip
    flat = metrics.summary(metrics.parse(b'{"accuracy": 0.97}'))  # a hand-written file
    assert flat == {"params": {}, "metrics": {"accuracy": {
        "value": 0.97, "step": None, "count": 1, "min": 0.97, "max": 0.97}}}  # fmt: skip
    for bad, why in (
        (b"[1]", "not a JSON object"),
        (b"{", "not JSON"),
        (b'{"loss": NaN}', "not a finite number"),
        (b'{"metrics": {"loss": []}}', "non-empty list"),
        (b'{"params": {"opt": {"lr": 1}}, "metrics": {}}', "not a JSON scalar"),
        (b'{"params": [], "metrics": {}}', "must be JSON objects"),
        (b" " * (metrics.MAX_BYTES + 1), "MiB collected"),
    ):
        with pytest.raises(metrics.MetricsFileError, match=why):
            metrics.parse(bad)


def _end(store: Store, job_id: str, state: JobState, collected: metrics.Collected) -> JobRecord:
    """A provider's terminal update, the metrics merged into it."""
    _record(store, job_id)
    return store.update_job(job_id, state=state, **collected.update)


def test_gather_summarises_or_names_the_reason(store: Store) -> None:
    uri = "s3://b/out/metrics.json"
    got = _end(store, "a-000001", JobState.SUCCEEDED, metrics.gather(uri, json.dumps(GOOD).encode))
    assert got.outputs["metrics"] == uri
    assert tracking.job_metrics(got) == {
        "params": {"C": 1.0, "solver": "lbfgs"}, "metrics": {"loss": 0.5, "acc": 0.9}
    }  # fmt: skip
    assert not metrics.due(got) and metrics.due(_record(store, "z-000009"))

    def denied() -> bytes:
        raise PermissionDenied("AccessDenied on s3://b/out", provider_type="sagemaker")

    failed = _end(store, "b-000002", JobState.FAILED, metrics.gather("s", denied))
    assert "not collected: AccessDenied" in (tracking.tracking_note(failed) or "")
    assert tracking.job_metrics(failed) == {"params": {}, "metrics": {}}
    assert "metrics" not in failed.outputs

    def missing() -> bytes:
        raise NotFound("NoSuchKey", provider_type="sagemaker")

    for job_id, read in (("c-000003", lambda: None), ("d-000004", missing)):
        none = _end(store, job_id, JobState.CANCELLED, metrics.gather("s", read))
        assert tracking.job_metrics(none) == {"params": {}, "metrics": {}}
        assert tracking.tracking_note(none) is None and not metrics.due(none)
    bad = _end(store, "e-000005", JobState.SUCCEEDED, metrics.gather("s", lambda: b"{"))
    assert (tracking.tracking_note(bad) or "").startswith("metrics.json: not JSON")
    running = _record(store, "f-000006")
    assert tracking.tracking_note(running) == "RUNNING: collected when it ends"


def test_read_from_tar_streams_to_the_member() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (("plots/a.png", b"x" * 5000), ("./metrics.json", b'{"a": 1}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert metrics.read_from_tar(io.BytesIO(buffer.getvalue())) == b'{"a": 1}'
    assert metrics.read_from_tar(io.BytesIO(buffer.getvalue()), "other.json") is None
    with pytest.raises(metrics.MetricsFileError, match="unreadable"):
        metrics.read_from_tar(io.BytesIO(b"not a tarball"))


def test_compare_jobs_marks_differences(store: Store, tmp_path: Path) -> None:
    ids = []
    for i, (c, acc) in enumerate(((0.1, 0.8), (1.0, 0.9), (1.0, None))):
        record = _record(store, f"j-00000{i}", JobState.SUCCEEDED)
        body = {"params": {"C": c, "seed": 0}, "metrics": {}}
        if acc is not None:
            body["metrics"] = {"acc": [{"value": acc, "step": None, "time": 1.0}]}
        collected = metrics.gather("x", lambda body=body: json.dumps(body).encode())
        store.update_job(record.id, **collected.update)
        ids.append(record.id)
    table = tracking.compare_jobs(ids, store)
    rows = {(r.kind, r.name): r for r in table.rows}
    assert rows[("param", "C")].values == [0.1, 1.0, 1.0] and rows[("param", "C")].differs
    assert not rows[("param", "seed")].differs
    assert rows[("metric", "acc")].values == [0.8, 0.9, None]
    assert json.loads(json.dumps(table.to_dict()))["jobs"][0]["id"] == ids[0]
    with pytest.raises(SpecError, match="at least two"):
        tracking.compare_jobs(ids[:1], store)
    with pytest.raises(NotFoundLocally):
        tracking.compare_jobs([ids[0], "nope-000000"], store)
