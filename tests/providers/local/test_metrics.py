"""metrics.json on the local provider: written by the job (runtime.log_metrics / log_params),
collected into the record by the supervisor when the job ends, compared with `jobs compare`."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from mlcloud import tracking
from mlcloud.config import Profile
from mlcloud.records import JobRecord, JobState
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.local import LocalProvider
from tests.conftest import MLCLOUD, REPO


def _train(c: float, cwd: Path) -> str:
    out = subprocess.run(
        [*MLCLOUD, "train", str(REPO / "examples/iris/job.yaml"), "--follow", "-o", "json",
         "--set", f"hyperparameters.C={c}"],
        cwd=cwd, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    record = json.loads(out.stdout)
    assert record["state"] == "SUCCEEDED"
    return str(record["id"])


def test_iris_twice_then_jobs_compare(tmp_path: Path) -> None:
    weak, strong = _train(0.01, tmp_path), _train(10.0, tmp_path)
    store = Store.open()
    try:
        first, second = store.get_job(weak), store.get_job(strong)
    finally:
        store.close()
    # what the job wrote, as it lies in its output dir
    written = json.loads((Path(first.outputs["output_dir"]) / "metrics.json").read_text())
    assert written["params"]["C"] == 0.01 and len(written["metrics"]["accuracy"]) == 1
    assert first.outputs["metrics"] == str(Path(first.outputs["output_dir"]) / "metrics.json")
    got = tracking.job_metrics(first)
    assert got["params"] == {"C": 0.01, "max_iter": 500, "train_rows": 120}
    assert got["metrics"]["accuracy"] == written["metrics"]["accuracy"][0]["value"]
    assert tracking.job_metrics(second)["params"]["C"] == 10.0

    text = subprocess.run(
        [*MLCLOUD, "jobs", "compare", weak, strong], capture_output=True, text=True, timeout=60
    )
    assert text.returncode == 0, text.stderr
    lines = {line.split()[2]: line for line in text.stdout.splitlines()[1:] if line.startswith("*")}
    assert "C" in lines and "0.01" in lines["C"] and "10" in lines["C"]
    assert "max_iter" not in text.stdout  # the same in both: hidden without --all
    assert "hidden" in text.stderr

    out = subprocess.run(
        [*MLCLOUD, "jobs", "compare", weak, strong, "-o", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    table = json.loads(out.stdout)
    assert [j["id"] for j in table["jobs"]] == [weak, strong]
    rows = {(r["kind"], r["name"]): r for r in table["rows"]}
    assert rows[("param", "C")] == {"kind": "param", "name": "C", "values": [0.01, 10.0],
                                    "differs": True}  # fmt: skip
    assert rows[("param", "max_iter")]["differs"] is False
    accuracy = rows[("metric", "accuracy")]["values"]
    assert all(0.0 < a <= 1.0 for a in accuracy)

    alone = subprocess.run([*MLCLOUD, "jobs", "compare", weak], capture_output=True, text=True)
    assert alone.returncode == 2 and "error: compare needs at least two jobs" in alone.stderr


def _job(tmp_path: Path, script: str, name: str = "m") -> TrainingJob:
    src = tmp_path / name
    src.mkdir()
    (src / "train.py").write_text(script)
    return TrainingJob(name=name, source=str(src), command=["python", "train.py"])


def _wait(provider: LocalProvider, job_id: str, timeout: float = 60) -> JobRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = provider.job_status(job_id)
        if record.state.terminal:
            return record
        time.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


@pytest.fixture
def provider() -> LocalProvider:
    return LocalProvider(Profile("local", "local"), Store.open())


def test_no_metrics_file_is_no_metrics(provider: LocalProvider, tmp_path: Path) -> None:
    record = _wait(provider, provider.submit_job(provider.plan_job(_job(tmp_path, "pass\n"))).id)
    assert record.state is JobState.SUCCEEDED
    assert tracking.job_metrics(record) == {"params": {}, "metrics": {}}
    assert tracking.tracking_note(record) is None and "metrics" not in record.outputs


def test_failed_job_keeps_what_it_logged_and_a_bad_file_is_named(
    provider: LocalProvider, tmp_path: Path
) -> None:
    script = (
        "from mlcloud import runtime\n"
        "for step in range(3):\n"
        "    runtime.log_metrics({'loss': 1.0 / (step + 1)}, step=step)\n"
        "raise SystemExit(3)\n"
    )
    failed = _wait(provider, provider.submit_job(provider.plan_job(_job(tmp_path, script))).id)
    assert failed.state is JobState.FAILED and failed.exit_code == 3
    summary = failed.details["tracking"]["metrics"]["loss"]
    third = pytest.approx(1 / 3)
    assert summary == {"value": third, "step": 2, "count": 3, "min": third, "max": 1.0}

    hand_written = (
        "from mlcloud import runtime\n"
        "(runtime.output_dir() / 'metrics.json').write_text('{\"loss\": NaN}')\n"
    )
    bad = _wait(
        provider, provider.submit_job(provider.plan_job(_job(tmp_path, hand_written, "b"))).id
    )
    assert bad.state is JobState.SUCCEEDED
    assert "not a finite number" in (tracking.tracking_note(bad) or "")
    assert tracking.job_metrics(bad)["metrics"] == {}


def test_profile_tracking_mirrors_the_job_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tracking: {mlflow: URI}`` on the profile: the job's runtime logs to a real MLflow
    store (file backend) as well, one run named by the job id."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps it behind a flag
    uri = (tmp_path / "mlruns").as_uri()
    provider = LocalProvider(Profile("local", "local", tracking={"mlflow": uri}), Store.open())
    script = (
        "from mlcloud import runtime\n"
        "runtime.log_params({'depth': 4})\n"
        "runtime.log_metrics({'rmse': 0.25}, step=7)\n"
    )
    plan = provider.plan_job(_job(tmp_path, script))
    assert plan.steps[0].request["env"]["MLFLOW_TRACKING_URI"] == uri
    record = _wait(provider, provider.submit_job(plan).id)
    assert record.state is JobState.SUCCEEDED, record.message
    (run,) = MlflowClient(uri).search_runs(["0"])
    assert run.info.run_name == record.id and run.info.status == "FINISHED"
    assert run.data.params == {"depth": "4"} and run.data.metrics == {"rmse": 0.25}
    assert tracking.job_metrics(record) == {"params": {"depth": 4}, "metrics": {"rmse": 0.25}}
