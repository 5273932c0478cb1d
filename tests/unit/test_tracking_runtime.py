"""runtime.log_metrics / log_params: metrics.json in the job's output dir, and the MLflow mirror
checked against a real MLflow tracking store (file backend) read back with MlflowClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcloud import runtime
from mlcloud.errors import SpecError
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean tracking state and an output dir per test (the state is per process in a job)."""
    out = tmp_path / "out"
    monkeypatch.setenv(runtime.ENV_OUTPUT_DIR, str(out))
    for var in ("RANK", runtime.ENV_NODE_RANK, runtime.ENV_MLFLOW_URI):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "_track", {})
    monkeypatch.setattr(runtime, "_warned", set())
    yield out
    runtime._track.clear()


def _read(out: Path) -> dict[str, object]:
    return json.loads((out / "metrics.json").read_text())  # type: ignore[no-any-return]


def test_format_steps_and_atomic_replace(fresh: Path) -> None:
    runtime.log_params({"lr": 0.1, "optimizer": "sgd", "layers": 3, "warm": True, "seed": None})
    for step in range(3):
        runtime.log_metrics({"loss": 1.0 / (step + 1), "acc": 0.5 + step / 10}, step=step)
    runtime.log_metrics({"test_acc": 0.9})
    runtime.flush_metrics()
    data = _read(fresh)
    assert data["params"] == {"lr": 0.1, "optimizer": "sgd", "layers": 3, "warm": True,
                              "seed": None}  # fmt: skip
    loss = data["metrics"]["loss"]  # type: ignore[index]
    assert [p["step"] for p in loss] == [0, 1, 2] and loss[2]["value"] == pytest.approx(1 / 3)
    assert set(loss[0]) == {"value", "step", "time"}
    assert data["metrics"]["test_acc"] == [  # type: ignore[index]
        {"value": 0.9, "step": None, "time": pytest.approx(loss[0]["time"], abs=60)}
    ]
    assert sorted(p.name for p in fresh.iterdir()) == ["metrics.json"]  # no temp file left


def test_writes_are_throttled_and_flushed(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "FLUSH_SECONDS", 3600.0)
    runtime.log_metrics({"loss": 1.0}, step=0)  # the first point is written at once
    runtime.log_metrics({"loss": 0.5}, step=1)
    assert len(_read(fresh)["metrics"]["loss"]) == 1  # type: ignore[index]
    runtime.flush_metrics()
    assert len(_read(fresh)["metrics"]["loss"]) == 2  # type: ignore[index]
    runtime.log_params({"a": 1})  # params are written at once
    assert _read(fresh)["params"] == {"a": 1}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: runtime.log_metrics({"loss": float("nan")}), "'loss': nan is not a finite"),
        (lambda: runtime.log_metrics({"loss": float("inf")}), "not a finite number"),
        (lambda: runtime.log_metrics({"loss": "0.1"}), "'0.1' is not a finite number"),
        (lambda: runtime.log_metrics({"ok": True}), "True is not a finite number"),
        (lambda: runtime.log_metrics({"": 1.0}), "metric name ''"),
        (lambda: runtime.log_metrics({"loss": 1.0}, step=-1), "non-negative integer"),
        (lambda: runtime.log_metrics({"loss": 1.0}, step=1.5), "non-negative integer"),  # type: ignore[arg-type]
        (lambda: runtime.log_params({"opt": {"lr": 0.1}}), "'opt'.*not a JSON scalar"),
        (lambda: runtime.log_params({"lr": float("nan")}), "not a JSON scalar"),
        (lambda: runtime.log_params({1: "x"}), "param name 1"),  # type: ignore[dict-item]
    ],
)
def test_bad_values_are_refused_clearly(call: object, message: str, fresh: Path) -> None:
    with pytest.raises(SpecError, match=message):
        call()  # type: ignore[operator]
    assert not (fresh / "metrics.json").exists()  # nothing half-logged


def test_numpy_scalars_are_numbers(fresh: Path) -> None:
    np = pytest.importorskip("numpy")
    runtime.log_metrics({"acc": np.float32(0.5), "n": np.int64(3)})
    runtime.log_params({"lr": np.float64(0.25)})
    data = _read(fresh)
    assert data["metrics"]["acc"][0]["value"] == 0.5  # type: ignore[index]
    assert data["params"] == {"lr": 0.25}


@pytest.mark.parametrize("env", [{"RANK": "1"}, {runtime.ENV_NODE_RANK: "2"}])
def test_only_the_chief_writes(
    env: dict[str, str], fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.log_params({"lr": 0.1})
    runtime.log_metrics({"loss": 1.0})
    assert runtime.flush_metrics() is None
    assert not (fresh / "metrics.json").exists()
    with pytest.raises(SpecError):  # still validated on every rank: a bug shows everywhere
        runtime.log_metrics({"loss": float("nan")})


def test_a_restarted_attempt_appends(fresh: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh.mkdir()
    earlier = {"params": {"lr": 0.1}, "metrics": {"loss": [{"value": 2.0, "step": 0, "time": 1}]}}
    (fresh / "metrics.json").write_text(json.dumps(earlier))
    runtime.log_metrics({"loss": 1.0}, step=1)
    runtime.flush_metrics()
    data = _read(fresh)
    assert data["params"] == {"lr": 0.1}
    assert [p["step"] for p in data["metrics"]["loss"]] == [0, 1]  # type: ignore[index]


# ---- MLflow: a real tracking store, in job processes ------------------------------------------
JOB = """
import sys
from mlcloud import runtime
runtime.log_params({"C": float(sys.argv[1]), "solver": "lbfgs"})
for step in range(3):
    runtime.log_metrics({"loss": 1.0 / (step + 1 + int(sys.argv[2]))}, step=step + int(sys.argv[2]))
runtime.log_metrics({"accuracy": 0.9})
if sys.argv[3] == "fail":
    raise RuntimeError("diverged")
if sys.argv[3] == "term":  # cancelled: SIGTERM, a last checkpoint, exit 143
    import os, signal, time
    runtime.on_sigterm(lambda: None)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
"""


def _job(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "train.py"
    script.write_text(JOB)
    full = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        runtime.ENV_OUTPUT_DIR: str(tmp_path / "out"),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # mlflow 3 keeps the file store behind this flag
        **env,
    }
    return subprocess.run(
        [sys.executable, str(script), *args], env=full, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.fixture
def file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's MlflowClient


@pytest.mark.usefixtures("file_store")
def test_mlflow_mirror_one_run_per_job_across_attempts(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    env = {runtime.ENV_MLFLOW_URI: uri, runtime.ENV_JOB_ID: "iris-0a1b2c"}
    first = _job(tmp_path, "0.5", "0", "fail", **env)
    assert first.returncode == 1 and "diverged" in first.stderr
    client = MlflowClient(uri)
    (run,) = client.search_runs(["0"])
    assert run.info.run_name == "iris-0a1b2c" and run.info.status == "FAILED"
    second = _job(tmp_path, "0.5", "3", "ok", **env)  # the restarted attempt
    assert second.returncode == 0, second.stderr
    (run,) = client.search_runs(["0"])  # still one run for the job
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlcloud.job_id"] == "iris-0a1b2c"
    assert run.data.params == {"C": "0.5", "solver": "lbfgs"}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, round(m.value, 4)) for m in history) == [
        (0, 1.0), (1, 0.5), (2, 0.3333), (3, 0.25), (4, 0.2), (5, 0.1667)
    ]  # fmt: skip
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "accuracy"))
    assert steps == [0, 1]  # no step given: the point's index in the metric's series
    cancelled = _job(tmp_path, "0.5", "6", "term", **env)
    assert cancelled.returncode == 143, cancelled.stderr
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    local = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(local["metrics"]["loss"]) == 9  # metrics.json keeps every attempt's points too


@pytest.mark.usefixtures("file_store")
def test_mlflow_experiment_name_and_azure_ml_run_id(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    env = {runtime.ENV_MLFLOW_URI: uri, "MLFLOW_EXPERIMENT_NAME": "iris"}
    assert _job(tmp_path, "1", "0", "ok", **env).returncode == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("iris")
    assert experiment is not None
    assert len(client.search_runs([experiment.experiment_id])) == 1
    # Azure ML starts the run itself and passes MLFLOW_RUN_ID: the job logs into that run
    own = client.create_run(experiment.experiment_id, run_name="azureml-run").info.run_id
    assert _job(tmp_path, "2", "0", "ok", **env, MLFLOW_RUN_ID=own).returncode == 0
    assert client.get_run(own).data.params["C"] == "2.0"
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_mlflow_missing_or_unreachable_costs_one_warning(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "mlflow.py").write_text("raise ImportError('no mlflow here')\n")
    env = {runtime.ENV_MLFLOW_URI: "http://127.0.0.1:1", "PYTHONPATH": f"{blocked}:{REPO}"}
    out = _job(tmp_path, "1", "0", "ok", **env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("mlcloud: warning:") == 1 and "mlflow-skinny" in out.stderr
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["params"]["C"] == 1.0

    pytest.importorskip("mlflow")
    secret = "http://alice:s3cr3t-token@127.0.0.1:1"  # nothing listens on port 1
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    out = _job(tmp_path, "1", "0", "ok", **{runtime.ENV_MLFLOW_URI: secret}, **quick)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("mlcloud: warning:") == 1 and "MLflow run not started" in out.stderr
    assert "s3cr3t" not in out.stderr and "alice" not in out.stderr
