"""The provider-agnostic CLI driving Azure ML (the fake workspace under the real MLClient)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import SETTINGS

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    path = tmp_path / "mlcloud.yaml"
    profile = {"type": "azureml", **SETTINGS, "compute": "serverless"}
    path.write_text(yaml.safe_dump({"default": "local", "profiles": {"azure": profile}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(path))
    return path


def run(*args: str) -> str:
    from mlcloud.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_dry_run_prints_the_command_job_rest_body(config: Path) -> None:
    """The real CLI entry point in a subprocess; the body parses back into the SDK's models."""
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase
    from azure.ai.ml.entities import Job

    out = subprocess.run(
        [sys.executable, "-m", "mlcloud.cli", "train", "examples/ddp/job.yaml",
         "--provider", "azure", "--dry-run", "--output", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    plan = json.loads(out)
    assert plan["provider"] == "azure" and plan["type"] == "azureml"
    (step,) = plan["steps"]
    assert step["call"] == "jobs.CreateOrUpdate"
    props = step["request"]["properties"]
    assert props["resources"]["instanceCount"] == 2
    assert props["distribution"]["distributionType"] == "PyTorch"
    assert props["queueSettings"]["jobTier"] == "Spot"
    entity = Job._from_rest_object(JobBase({"name": "x", **step["request"]}))
    assert type(entity).__name__ in ("Command", "CommandJob")  # the SDK returns its builder
    assert entity.resources.instance_count == 2 and entity.queue_settings.job_tier == "spot"


def _settle(azure: Installed, job_id: str) -> None:
    azure.fake.set_job_logs(job_id, "training done\n")
    azure.fake.set_job_status(job_id, "Completed")


def test_train_deploy_blue_green_predict_undeploy(
    config: Path, azure: Installed, tmp_path: Path
) -> None:
    job_file = str(REPO / "examples" / "iris" / "job.yaml")
    first = json.loads(run("train", job_file, "--provider", "azure", "--output", "json"))
    assert first["state"] == "PENDING" and first["type"] == "azureml"
    _settle(azure, first["native_id"])
    assert "training done" in run("logs", first["id"])
    shown = json.loads(run("jobs", "show", first["id"], "--output", "json"))
    assert shown["state"] == "SUCCEEDED"

    blue = json.loads(run("deploy", first["id"], "-n", "iris-cli", "--provider", "azure",
                          "--output", "json"))  # fmt: skip
    assert blue["state"] == "READY" and blue["source_job"] == first["id"]
    model_put = azure.transport.find("PUT", "/models/iris-cli/versions/")[0].json()
    # lineage: the model asset is the job's model output, where it is (the SDK long-forms it)
    short = first["outputs"]["model_dir"].removeprefix("azureml://")
    assert model_put["properties"]["modelUri"].endswith(short)
    answer = json.loads(run("predict", "iris-cli", "--provider", "azure",
                            "--data", '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'))  # fmt: skip
    assert answer == {"predictions": [20.0]}

    second = json.loads(run("train", job_file, "--provider", "azure", "--output", "json"))
    _settle(azure, second["native_id"])
    run("jobs", "show", second["id"])
    green = json.loads(run("deploy", second["id"], "-n", "iris-cli", "--provider", "azure",
                           "--output", "json"))  # fmt: skip
    old, new = blue["details"]["deployment"], green["details"]["deployment"]
    assert old != new and green["details"]["deployments"] == {new: 100}
    assert set(azure.fake.deployments("iris-cli")) == {new}
    listed: list[dict[str, Any]] = json.loads(run("endpoints", "list", "--output", "json"))
    assert [e["name"] for e in listed] == ["iris-cli"]

    assert "removed" in run("undeploy", "iris-cli", "--provider", "azure")
    assert "nothing to do" in run("undeploy", "iris-cli", "--provider", "azure")
    assert azure.fake.deployments("iris-cli") == {}


def test_cli_reports_unsupported_autoscaling(
    config: Path, azure: Installed, tmp_path: Path
) -> None:
    from mlcloud import modeldir
    from mlcloud.cli import cli

    model = tmp_path / "m"
    model.mkdir()
    (model / "p.py").write_text("x = 1\n")
    modeldir.write_manifest(model, framework="custom", entry={"predictor": "p:P"})
    result = CliRunner().invoke(
        cli, ["deploy", str(model), "-n", "auto-ep", "--provider", "azure",
              "--min-replicas", "1", "--max-replicas", "3", "--dry-run", "--trust-code"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "autoscaling" in str(result.exception)
