"""A pipeline step on Azure ML (the transport fake under the real MLClient). The fake lives in
this process, so the run's runner does too (``runner.execute`` in a thread, exactly what the
detached process runs); the test plays Azure ML's end: the job's metrics.json lands in the
datastore's container and the job completes. The gate reads those metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlcloud import api
from mlcloud import pipelines as pl
from mlcloud.errors import NotFoundLocally
from mlcloud.pipelines import launch, runner
from tests.fakes.azureml import Installed, install
from tests.pipelines.conftest import STEP_PY
from tests.providers.azureml.conftest import SETTINGS

CONTAINER = "azureml-blobstore"  # the fake workspaceblobstore's container


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Installed]:
    installed = install(monkeypatch)
    yield installed
    installed.fake.close()


def test_a_job_step_on_azure_ml_gated_on_its_metrics(
    tmp_path: Path, azure: Installed, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "step.py").write_text(STEP_PY)
    profiles = {"azure": {"type": "azureml", **SETTINGS}}
    (root / "mlcloud.yaml").write_text(yaml.safe_dump({"default": "azure", "profiles": profiles}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(root / "mlcloud.yaml"))
    monkeypatch.chdir(tmp_path)  # the SDK records git facts of the working directory
    data = {
        "name": "onazure",
        "steps": [
            {"name": "train", "job": {"name": "train", "command": ["python", "step.py"],
                                      "framework": {"name": "sklearn", "version": "1.5"}}},
            {"name": "gate", "condition": "train.metrics.score >= 0.8"},
        ],
    }  # fmt: skip
    (root / "pipeline.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(launch, "spawn", lambda store, run_id: None)
    run = pl.run(root / "pipeline.yaml")
    thread = threading.Thread(target=runner.execute, args=(run.id,), daemon=True)
    thread.start()
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
        time.sleep(0.05)
    assert record.type == "azureml"
    out = tmp_path / "out"
    code = "from mlcloud import runtime; runtime.log_metrics({'score': 0.85})"
    env = {**os.environ, "MLCLOUD_OUTPUT_DIR": str(out)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    key = f"{CONTAINER}/mlcloud/jobs/{record.id}/output/metrics.json"
    azure.fake.blobs[key] = (out / "metrics.json").read_bytes()
    azure.fake.set_job_status(record.native_id, "Completed")
    thread.join(60)
    final = pl.get(run.id)
    by = {s.step: s for s in final.steps}
    assert final.state == "SUCCEEDED", pl.describe(final)
    assert by["train"].outputs["metrics"] == {"score": 0.85}
    assert "train.metrics.score=0.85" in str(by["gate"].message)
