"""Profile ``tracking: {mlflow: URI}`` → MLFLOW_TRACKING_URI in every provider's planned job."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from mlcloud import api
from mlcloud.config import load_config
from mlcloud.errors import ConfigError

URI = "https://mlflow.example.com"
PROFILES = f"""
default: laptop
profiles:
  laptop: {{type: local, tracking: {{mlflow: ./mlruns}}}}
  aws:
    type: sagemaker
    region: us-east-1
    role_arn: arn:aws:iam::123456789012:role/mlcloud
    bucket: mlcloud-bucket
    tracking: {{mlflow: {URI}}}
  gcp: {{type: vertex, project: mlcloud-test, location: us-central1, staging_bucket: "gs://mlcloud-bucket",
         tracking: {{mlflow: {URI}}}}}
  azure: {{type: azureml, subscription_id: 00000000-0000-4000-8000-000000000001,
           resource_group: rg, workspace: ws1, compute: cpu, tracking: {{mlflow: {URI}}}}}
  ray: {{type: ray, tracking: {{mlflow: "sqlite:///runs/mlflow.db"}}}}
  plain: {{type: local}}
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mlcloud.yaml").write_text(PROFILES)
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    (tmp_path / "job.yaml").write_text(
        "name: t\nsource: ./src\ncommand: [python, train.py]\nenv: {A: b}\n"
        "framework: {name: sklearn, version: '1.5'}\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _planned_env_values(profile: str, job: Path) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = api.plan(job, profile)
    text = json.dumps(plan.to_dict())
    return [v for v in (URI, "mlruns", "mlflow.db") if v in text] + [
        json.dumps(plan.spec.env.get("MLFLOW_TRACKING_URI"))
    ]


@pytest.mark.parametrize("profile", ["aws", "gcp", "azure"])
def test_cloud_profiles_put_the_uri_in_the_job_env(project: Path, profile: str) -> None:
    found = _planned_env_values(profile, project / "job.yaml")
    assert found == [URI, json.dumps(URI)]


@pytest.mark.parametrize(("profile", "path"), [("laptop", "mlruns"), ("ray", "runs/mlflow.db")])
def test_relative_uris_resolve_from_the_config_file(project: Path, profile: str, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = api.plan(project / "job.yaml", profile)
    uri = plan.spec.env["MLFLOW_TRACKING_URI"]
    assert isinstance(uri, str) and uri.endswith(str(project / path))
    assert uri in json.dumps(plan.to_dict())  # in the request itself, not only the spec


def test_job_env_wins_and_no_tracking_means_no_variable(project: Path) -> None:
    (project / "own.yaml").write_text(
        "name: t\nsource: ./src\ncommand: [python, train.py]\n"
        "env: {MLFLOW_TRACKING_URI: 'https://own.example.com'}\n"
    )
    plan = api.plan(project / "own.yaml", "aws")
    assert URI not in json.dumps(plan.to_dict())
    assert plan.to_dict()["steps"][0]["request"]["Environment"]["MLFLOW_TRACKING_URI"] == (
        "https://own.example.com"
    )
    assert "MLFLOW_TRACKING_URI" not in api.plan(project / "job.yaml", "plain").spec.env


@pytest.mark.parametrize(
    ("tracking", "message"),
    [
        ("{mlflow: 'https://bob:hunter2@mlflow.example.com'}", "carries a password"),
        ("{wandb: x}", "mapping like"),
        ("{mlflow: ''}", "must be a tracking URI"),
    ],
)
def test_bad_tracking_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tracking: str, message: str
) -> None:
    (tmp_path / "mlcloud.yaml").write_text(
        f"profiles:\n  p: {{type: local, tracking: {tracking}}}\n"
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config()
    assert "hunter2" not in str(caught.value)


def test_the_submitters_mlflow_uri_is_passed_on(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://shell.example.com")
    plan = api.plan(project / "job.yaml", "plain")
    assert plan.spec.env["MLFLOW_TRACKING_URI"] == "https://shell.example.com"
    assert api.plan(project / "job.yaml", "aws").spec.env["MLFLOW_TRACKING_URI"] == URI  # profile
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "runs")  # a path: from where mlcloud is run
    assert api.plan(project / "job.yaml", "plain").spec.env["MLFLOW_TRACKING_URI"] == str(
        project / "runs"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://u:pw-123@mlflow.example.com")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI carries a password") as caught:
        api.plan(project / "job.yaml", "plain")
    assert "pw-123" not in str(caught.value) and "MLFLOW_TRACKING_PASSWORD" in str(
        caught.value.hint
    )
