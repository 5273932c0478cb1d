"""The provider-agnostic CLI driving SageMaker (moto in server mode as the far end)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.providers.sagemaker.conftest import (
    BUCKET,
    queue_endpoint_results,
    seed_logs,
    set_job_status,
    settings,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str) -> Path:
    path = tmp_path / "mlcloud.yaml"
    profile = {"type": "sagemaker", **settings()}
    path.write_text(yaml.safe_dump({"default": "local", "profiles": {"aws": profile}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(path))
    return path


def run(*args: str) -> Any:
    from mlcloud.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_dry_run_prints_a_valid_create_training_job(config: Path) -> None:
    """The real CLI entry point in a subprocess; the request validates against botocore's model."""
    import botocore.session
    from botocore.validate import validate_parameters

    out = subprocess.run(
        [sys.executable, "-m", "mlcloud.cli", "train", "examples/ddp/job.yaml",
         "--provider", "aws", "--dry-run", "--output", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    plan = json.loads(out)
    assert plan["provider"] == "aws" and plan["type"] == "sagemaker"
    (step,) = plan["steps"]
    assert step["call"] == "sagemaker.CreateTrainingJob"
    model = botocore.session.get_session().get_service_model("sagemaker")
    validate_parameters(step["request"], model.operation_model("CreateTrainingJob").input_shape)
    assert step["request"]["ResourceConfig"]["InstanceCount"] == 2


def test_train_deploy_predict_undeploy(config: Path, tmp_path: Path, aws_env: str) -> None:
    from mlcloud.store import Store

    src = tmp_path / "job"
    src.mkdir()
    (src / "train.py").write_text(f"# {tmp_path.name}\nprint('training')\n")
    (src / "job.yaml").write_text(
        yaml.safe_dump({"name": "cli-iris", "command": ["python", "train.py"]})
    )
    record = json.loads(run("train", str(src / "job.yaml"), "--provider", "aws", "-o", "json"))
    assert record["type"] == "sagemaker" and record["state"] == "PENDING"
    native = record["native_id"]

    seed_logs(native, ["training", "saved model"])
    set_job_status(native, "Completed", "Completed")
    shown = json.loads(run("jobs", "show", record["id"], "-o", "json"))
    assert shown["state"] == "SUCCEEDED"
    model_uri = shown["outputs"]["model_dir"]
    assert model_uri.startswith(f"s3://{BUCKET}/") and model_uri.endswith("model.tar.gz")
    assert run("logs", record["id"]).splitlines() == ["training", "saved model"]

    endpoint = json.loads(
        run("deploy", record["id"], "-n", "cli-ep", "--provider", "aws", "-o", "json")
    )
    assert endpoint["state"] == "READY" and endpoint["source_job"] == record["id"]
    assert endpoint["model"] == model_uri

    queue_endpoint_results(aws_env, [{"predictions": [1]}])
    answer = json.loads(run("predict", "cli-ep", "-d", '{"instances": [[1, 2, 3, 4]]}'))
    assert answer == {"predictions": [1]}

    run("undeploy", "cli-ep")
    assert Store.open().list_endpoints(provider="aws") == []
    assert "does not exist" in run("undeploy", "cli-ep")
