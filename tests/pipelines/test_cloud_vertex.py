"""A pipeline step on Vertex AI (the proto-strict fake, real GAPIC/GCS clients): the runner
sends the CustomJob, the test plays the Vertex node (``run_on_node``: the job's own code runs and
its metrics.json lands in the fake's bucket) and ends the job; the gate reads the metrics the job
logged, and a local step follows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from mlcloud import api
from mlcloud import pipelines as pl
from mlcloud.errors import NotFoundLocally
from tests.fakes.vertex import FakeVertex
from tests.pipelines.conftest import STEP_PY, job
from tests.providers.vertex.conftest import fake, run_on_node, settings_for  # noqa: F401


@pytest.fixture
def project(tmp_path: Path, fake: FakeVertex, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    root = tmp_path / "project"
    root.mkdir()
    (root / "step.py").write_text(STEP_PY)
    profiles = {"local": {"type": "local"}, "gcp": {"type": "vertex", **settings_for(fake.url)}}
    (root / "mlcloud.yaml").write_text(yaml.safe_dump({"default": "local", "profiles": profiles}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(root / "mlcloud.yaml"))
    return root


def test_a_job_step_on_vertex_gated_on_its_metrics(
    project: Path,
    fake: FakeVertex,  # noqa: F811
    tmp_path: Path,
) -> None:
    data = {
        "name": "onvertex",
        "steps": [
            {"name": "train", "provider": "gcp",
             "job": {"name": "train", "command": ["python", "step.py"], "image": "python:3.11",
                     "env": {"SCORE": "0.93"}}},
            {"name": "gate", "condition": "train.metrics.score > 0.9"},
            {"name": "after", "job": job("after"), "needs": ["gate"]},
        ],
    }  # fmt: skip
    path = project / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    run = pl.run(path)
    deadline = time.monotonic() + 60
    while True:
        step = {s.step: s for s in pl.get(run.id).steps}["train"]
        try:
            record = api.job(str(step.job_id)).record if step.job_id else None
        except NotFoundLocally:
            record = None
        if record is not None and record.native_id:
            break
        assert time.monotonic() < deadline, pl.describe(pl.get(run.id))
        time.sleep(0.1)
    assert [c["customJob"]["displayName"] for c in fake.vertex.calls("JobService.CreateCustomJob")]
    node = run_on_node(fake, str(record.native_id), tmp_path / "node")
    assert node.returncode == 0, node.stderr
    fake.vertex.set_job_state(str(record.native_id), "JOB_STATE_SUCCEEDED")
    final = pl.wait(run.id, timeout=90)
    by = {s.step: s for s in final.steps}
    assert final.state == "SUCCEEDED", pl.describe(final)
    assert by["train"].outputs["metrics"] == {"score": 0.93}
    assert by["train"].outputs["provider"] == "gcp"
    assert api.job(str(by["after"].job_id)).record.type == "local"
