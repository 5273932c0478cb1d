"""examples/pipeline end to end (issue 12, item 4): on the local provider from a fresh home,
then again through its data trigger when the training data changes; and its dry-run on every
cloud profile (configured offline: nothing is sent)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mlcloud import api
from mlcloud import pipelines as pl
from mlcloud.store import Store
from mlcloud.store import pipelines as db
from tests.conftest import MLCLOUD

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples/pipeline/pipeline.yaml"
PROFILES = {
    "default": "local",
    "profiles": {
        "local": {"type": "local"},
        "aws": {
            "type": "sagemaker",
            "region": "us-east-1",
            "bucket": "my-bucket",
            "role_arn": "arn:aws:iam::123456789012:role/mlcloud",
        },
        "gcp": {
            "type": "vertex",
            "project": "my-project",
            "location": "us-central1",
            "staging_bucket": "gs://my-bucket",
        },
        "azure": {
            "type": "azureml",
            "subscription_id": "00000000-0000-4000-8000-000000000001",
            "resource_group": "rg",
            "workspace": "ml-ws",
            "compute": "cpu-cluster",
        },
        "onprem": {"type": "ray", "address": "http://127.0.0.1:8265"},
    },
}
FIRST_CALL = {
    "aws": "sagemaker.CreateTrainingJob",
    "gcp": "JobService.CreateCustomJob",
    "azure": "jobs.CreateOrUpdate",
    "onprem": "JobSubmissionClient.submit_job",
    "local": "local.Popen",
}


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MLCLOUD, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("profile", sorted(FIRST_CALL))
def test_the_example_dry_runs_on_every_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    config = tmp_path / "mlcloud.yaml"
    config.write_text(yaml.safe_dump(PROFILES))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    out = cli(
        "pipelines", "run", str(EXAMPLE), "--dry-run", "-p", profile, "-o", "json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr  # the profiles are complete: no placeholders
    plan = json.loads(out.stdout)
    steps = {s["step"]: s for s in plan["steps"]}
    assert list(steps) == ["train", "evaluate", "gate", "register", "deploy"]
    for name in ("train", "evaluate"):
        assert steps[name]["provider"] == profile
        assert steps[name]["plan"]["steps"][0]["call"] == FIRST_CALL[profile]
    assert steps["evaluate"]["inputs"] == {"model": "train.model"}  # the upstream output
    if profile == "local":  # a local plan shows it in place
        assert "<train.model>" in json.dumps(steps["evaluate"]["plan"])
    assert steps["gate"]["request"]["expression"].startswith("evaluate.metrics.accuracy")
    assert steps["deploy"]["needs"] == ["register"] and "note" in steps["deploy"]


def copy_example(tmp_path: Path) -> Path:
    """The example and the iris job it trains, copied: the test changes their data."""
    for name in ("iris", "pipeline"):
        shutil.copytree(REPO / "examples" / name, tmp_path / "examples" / name)
    path = tmp_path / "examples/pipeline/pipeline.yaml"
    text = path.read_text().replace("every: 1m, settle: 5s", "every: 1s, settle: 1s")
    path.write_text(text.replace("bake: 5m", "bake: 1h"))
    return path


def test_the_example_end_to_end_then_its_data_trigger(tmp_path: Path) -> None:
    path = copy_example(tmp_path)
    out = cli("pipelines", "run", str(path), "--follow", "-o", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = json.loads(out.stdout)
    steps = {s["step"]: s for s in run["steps"]}
    assert [s["state"] for s in run["steps"]] == ["SUCCEEDED"] * 5, out.stderr
    assert steps["evaluate"]["outputs"]["metrics"]["accuracy"] >= 0.9
    assert steps["register"]["outputs"]["ref"] == "iris:1"
    model = api.model("iris@challenger")
    assert model["version"] == 1 and model["source_job"] == steps["train"]["job_id"]
    try:
        answer = api.endpoint("iris").predict({"instances": [[5.1, 3.5, 1.4, 0.2]]})
        assert answer["predictions"] == [0]
        _data_trigger_reruns_it(tmp_path, path)
    finally:
        _clean_up()


def _data_trigger_reruns_it(tmp_path: Path, path: Path) -> None:
    assert cli("pipelines", "schedule", str(path), cwd=tmp_path).returncode == 0
    scheduler = subprocess.Popen([*MLCLOUD, "scheduler", "--interval", "0.2"], cwd=tmp_path)
    try:
        data = tmp_path / "examples/iris/data/iris.csv"
        rows = data.read_text().splitlines()
        data.write_text("\n".join(rows + rows[1:11]) + "\n")  # new training data
        store = Store.open()
        deadline = time.monotonic() + 240
        while True:
            fired = db.firings(store, "iris-retrain")
            runs = [r for r in pl.runs("iris-retrain") if r.reason.startswith("data ")]
            if fired and runs and runs[0].state in pl.FINAL:
                break
            assert time.monotonic() < deadline, [f.to_dict() for f in fired]
            time.sleep(0.5)
        store.close()
    finally:
        scheduler.send_signal(signal.SIGINT)
        scheduler.wait(10)
    assert len(fired) == 1 and fired[0].kind == "data" and "content digest" in fired[0].reason
    rerun = pl.get(runs[0].id)
    by = {s.step: s for s in rerun.steps}
    assert rerun.state == "SUCCEEDED", pl.describe(rerun)
    assert not by["train"].cached  # the data changed: trained again
    assert by["register"].outputs["ref"] == "iris:2"
    assert by["deploy"].outputs["rollout"]  # the endpoint served v1: v2 goes out as a canary


def _clean_up() -> None:
    from mlcloud import rollouts

    for row in rollouts.list_rollouts():
        if row.state in ("starting", "baking"):
            rollouts.abort(row.id)
    try:
        api.endpoint("iris").undeploy()
    except Exception as exc:
        print(f"cleanup: {exc}", file=sys.stderr)
