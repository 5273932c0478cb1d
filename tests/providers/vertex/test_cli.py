"""The CLI with a vertex profile: --dry-run prints the CustomJob; and the whole path against the
fake: train (the job's container command really runs, on a simulated Vertex node) -> status/logs
-> deploy the job's model -> predict (the fake serves it with mlcloud's loader) -> re-deploy
(traffic moves to the new version) -> undeploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlcloud import modeldir
from mlcloud.cli import main
from tests.fakes.vertex import FakeVertex
from tests.providers.vertex.conftest import run_on_node, settings_for

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(fake: FakeVertex, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mlcloud.yaml"
    profile = {"type": "vertex", **settings_for(fake.url)}
    path.write_text(yaml.safe_dump({"default": "local", "profiles": {"gcp": profile}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(path))
    monkeypatch.delenv("MLCLOUD_PROVIDER", raising=False)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    main(list(args))
    return capsys.readouterr().out


def test_dry_run_prints_the_custom_job(config: Path, home: Path) -> None:
    env = {**os.environ, "MLCLOUD_CONFIG": str(config), "MLCLOUD_HOME": str(home)}
    argv = [sys.executable, "-m", "mlcloud.cli", "train", str(ROOT / "examples/ddp/job.yaml")]
    start = time.perf_counter()
    out = subprocess.run(
        [*argv, "--provider", "gcp", "--dry-run", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    print(f"mlcloud train --dry-run (vertex) wall time: {time.perf_counter() - start:.2f}s")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["provider"] == "gcp" and plan["type"] == "vertex"
    (step,) = plan["steps"]
    assert step["call"] == "JobService.CreateCustomJob"
    pools = step["request"]["customJob"]["jobSpec"]["workerPoolSpecs"]
    assert len(pools) == 2 and pools[0]["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_T4"


TRAIN = """import json, pathlib
from mlcloud import runtime

rows = (runtime.input_dir("train") / "rows.csv").read_text().split()
src = pathlib.Path("predictor")
(src / "weights.json").write_text(json.dumps({"scale": runtime.hparams()["scale"]}))
runtime.save_model(src, "custom", predictor="scaler:Scaler")
print(f"trained on {len(rows)} rows")
"""
SCALER = """import json, pathlib


class Scaler:
    def __init__(self, root):
        self.scale = json.loads((pathlib.Path(root) / "weights.json").read_text())["scale"]

    def predict(self, rows):
        return [sum(row) * self.scale for row in rows]
"""


def write_job(root: Path) -> Path:
    (root / "predictor").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "predictor" / "scaler.py").write_text(SCALER)
    (root / "data" / "rows.csv").write_text("1\n2\n3\n")
    spec = {
        "name": "scaler",
        "command": ["python", "train.py"],
        "image": "python:3.11-slim",
        "inputs": {"train": "./data"},
        "hyperparameters": {"scale": 10},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(spec))
    return root / "job.yaml"


def test_train_deploy_predict_update_undeploy(
    config: Path, fake: FakeVertex, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file = write_job(tmp_path / "project")
    job = json.loads(cli(capsys, "train", str(job_file), "--provider", "gcp", "--output", "json"))
    assert job["state"] == "PENDING" and job["type"] == "vertex"

    # Vertex runs the job: here, its real container command on a simulated node
    fake.vertex.set_job_state(job["native_id"], "JOB_STATE_RUNNING")
    run = run_on_node(fake, job["native_id"], tmp_path / "node")
    assert run.returncode == 0, run.stderr
    fake.vertex.add_log(job["native_id"], *run.stdout.splitlines())
    fake.vertex.set_job_state(job["native_id"], "JOB_STATE_SUCCEEDED")

    shown = json.loads(cli(capsys, "jobs", "show", job["id"], "--output", "json"))
    assert shown["state"] == "SUCCEEDED"
    assert "trained on 3 rows" in cli(capsys, "logs", job["id"])

    # deploy the job's model (lineage: the job id resolves to its gs:// model dir)
    endpoint = json.loads(
        cli(capsys, "deploy", job["id"], "-n", "scaler", "--provider", "gcp", "--output", "json")
    )
    assert endpoint["state"] == "READY" and endpoint["source_job"] == job["id"]
    assert endpoint["model"] == job["outputs"]["model_dir"]
    rows = '{"instances": [[1, 2], [3, 4]]}'
    assert json.loads(cli(capsys, "predict", "scaler", "--data", rows))["predictions"] == [30, 70]

    # re-deploy another model: the new version beside the old, traffic moved, old undeployed
    other = tmp_path / "other"
    (other / "src").mkdir(parents=True)
    (other / "src" / "scaler.py").write_text(SCALER)
    (other / "src" / "weights.json").write_text('{"scale": -1}')
    modeldir.save(other / "src", "custom", other / "model", predictor="scaler:Scaler")
    updated = json.loads(
        cli(capsys, "deploy", str(other / "model"), "-n", "scaler", "--provider", "gcp",
            "--output", "json", "--trust-code")  # a custom predictor no job here produced
    )  # fmt: skip
    assert updated["url"] == endpoint["url"] and len(updated["details"]["deployed_models"]) == 1
    assert len(fake.vertex.calls("EndpointService.UndeployModel")) == 1
    assert json.loads(cli(capsys, "predict", "scaler", "--data", rows))["predictions"] == [-3, -7]

    assert "removed" in cli(capsys, "undeploy", "scaler", "--provider", "gcp")
    assert fake.vertex.endpoints == {}
