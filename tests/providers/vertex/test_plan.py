"""plan_job: the exact CreateCustomJobRequest, golden files, catalog, unsupported features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.cloud import aiplatform_v1
from google.protobuf import json_format

from mlcloud.config import Profile
from mlcloud.errors import ConfigError, SpecError, UnsupportedFeature
from mlcloud.specs import TrainingJob, load_job
from mlcloud.store import Store
from providers.vertex import VertexProvider
from providers.vertex.job_plan import VertexJobContext
from tests.providers.vertex.conftest import settings_for

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "vertex"
FAKE_URL = "http://127.0.0.1:9"  # planning never connects


@pytest.fixture
def planner(home: Path) -> VertexProvider:
    settings = {**settings_for(FAKE_URL), "network": "projects/123/global/networks/ml"}
    return VertexProvider(Profile("gcp", "vertex", settings), Store.open())


def request_of(plan: object) -> dict:
    (step,) = plan.steps  # type: ignore[attr-defined]
    assert step.call == "JobService.CreateCustomJob"
    return dict(step.request)


def strict_roundtrip(request: dict) -> dict:
    """Parse as the real proto (unknown fields are errors) and print it back as proto-JSON."""
    proto = aiplatform_v1.CreateCustomJobRequest.pb()()
    json_format.ParseDict(request, proto, ignore_unknown_fields=False)
    return json_format.MessageToDict(proto)


@pytest.mark.parametrize("example", ["iris", "ddp"])
def test_golden_plan(planner: VertexProvider, example: str) -> None:
    plan = planner.plan_job(load_job(ROOT / "examples" / example / "job.yaml"))
    request = request_of(plan)
    assert strict_roundtrip(request) == request, "the plan is canonical proto-JSON"
    # The code archive holds mlcloud's runtime and launcher too: its hash is not the plan's shape.
    code_sha = plan.context_as(VertexJobContext).archive.sha256
    text = plan.to_json().replace(plan.id, "<id>").replace(code_sha, "<code-sha256>") + "\n"
    path = GOLDEN / f"{example}.json"
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing {path}: run with MLCLOUD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"plan differs from {path}; MLCLOUD_UPDATE_GOLDEN=1 updates it"


def test_ddp_plan_is_multi_node_spot_gpu(planner: VertexProvider) -> None:
    plan = planner.plan_job(load_job(ROOT / "examples" / "ddp" / "job.yaml"))
    job = request_of(plan)["customJob"]
    chief, workers = job["jobSpec"]["workerPoolSpecs"]
    assert chief["replicaCount"] == "1" and workers["replicaCount"] == "1"
    for pool in (chief, workers):
        assert pool["machineSpec"]["acceleratorType"] == "NVIDIA_TESLA_T4"
        assert pool["machineSpec"]["acceleratorCount"] == 1
        assert "gpu" in pool["containerSpec"]["imageUri"]
        # 4 CPUs + 16Gi does not fit n1-standard-4 (15 GB): the next size up
        assert pool["machineSpec"]["machineType"] == "n1-standard-8"
    scheduling = job["jobSpec"]["scheduling"]
    assert scheduling == {"timeout": "7200s", "restartJobOnWorkerRestart": True, "strategy": "SPOT"}
    base = job["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"]
    assert base == f"gs://mlcloud-staging/mlcloud/jobs/{plan.id}"
    env = {e["name"]: e["value"] for e in chief["containerSpec"]["env"]}
    assert env["MLCLOUD_CHECKPOINT_DIR"] == f"{base}/checkpoints"
    assert env["MLCLOUD_JOB_ID"] == plan.id and env["MLCLOUD_PROVIDER_TYPE"] == "vertex"
    assert json.loads(env["MLCLOUD_HPARAMS"])["steps"] == 300
    assert job["labels"] == {"team": "ml", "mlcloud-job-id": plan.id, "mlcloud-name": "ddp"}
    assert job["jobSpec"]["network"] == "projects/123/global/networks/ml"
    assert job["jobSpec"]["serviceAccount"].startswith("trainer@")
    code = plan.context_as(VertexJobContext).code_key
    assert code.startswith("mlcloud/code/") and code.endswith(".tar.gz")
    assert f"/gcs/mlcloud-staging/{code}" in chief["containerSpec"]["command"]


def test_iris_inputs_are_content_addressed_gs_uris(planner: VertexProvider) -> None:
    plan = planner.plan_job(load_job(ROOT / "examples" / "iris" / "job.yaml"))
    job = request_of(plan)["customJob"]
    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    env = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
    uri = env["MLCLOUD_INPUT_TRAIN"]
    assert uri.startswith("gs://mlcloud-staging/mlcloud/inputs/") and len(uri.split("/")[-1]) == 64
    uploads = plan.context_as(VertexJobContext).uploads
    assert [u.key.rsplit("/", 1)[-1] for u in uploads] == ["iris.csv"]
    assert "acceleratorType" not in pool["machineSpec"]
    assert pool["containerSpec"]["imageUri"].endswith("sklearn-cpu.1-5:latest")
    assert job["jobSpec"]["scheduling"] == {"timeout": "1800s"}


def _job(tmp_path: Path, **fields: object) -> TrainingJob:
    (tmp_path / "train.py").write_text("print('hi')\n")
    data = {"name": "t", "source": str(tmp_path), "command": ["python", "train.py"]}
    return TrainingJob.model_validate({**data, "image": "python:3.11", **fields})


def test_explicit_instance_type_wins(planner: VertexProvider, tmp_path: Path) -> None:
    job = _job(tmp_path, resources={"cpus": 2, "instance_type": {"vertex": "a2-highgpu-1g"}})
    spec = request_of(planner.plan_job(job))["customJob"]["jobSpec"]["workerPoolSpecs"][0]
    assert spec["machineSpec"] == {
        "machineType": "a2-highgpu-1g",
        "acceleratorType": "NVIDIA_TESLA_A100",
        "acceleratorCount": 1,
    }
    job = _job(tmp_path, resources={"instance_type": {"vertex": "n1-highmem-16"}})
    spec = request_of(planner.plan_job(job))["customJob"]["jobSpec"]["workerPoolSpecs"][0]
    assert spec["machineSpec"] == {"machineType": "n1-highmem-16"}


def test_plan_is_pure_and_unique_per_call(planner: VertexProvider, tmp_path: Path) -> None:
    job = _job(tmp_path)
    a, b = planner.plan_job(job), planner.plan_job(job)
    assert a.id != b.id
    assert a.to_json().replace(a.id, "X") == b.to_json().replace(b.id, "X")
    assert planner.store.list_jobs() == []


@pytest.mark.parametrize(
    ("fields", "feature"),
    [
        ({"nodes": {"min": 1, "max": 3}}, "elastic"),
        ({"inputs": {"train": "s3://bucket/data"}}, "s3://"),
        ({"checkpoint": "/tmp/ckpt"}, "checkpoint"),
        ({"output": "s3://b/out"}, "output"),
        ({"resources": {"accelerators": "TPU9:1"}}, "TPU9"),
        ({"resources": {"cpus": 500}}, "resources"),
    ],
)
def test_unsupported_features(
    planner: VertexProvider, tmp_path: Path, fields: dict, feature: str
) -> None:
    with pytest.raises(UnsupportedFeature) as err:
        planner.plan_job(_job(tmp_path, **fields))
    assert feature in str(err.value) and err.value.hint
    assert err.value.provider.startswith("vertex")


def test_missing_image_and_source(planner: VertexProvider, tmp_path: Path) -> None:
    job = _job(tmp_path).model_copy(update={"image": None})
    with pytest.raises(SpecError, match="image"):
        planner.plan_job(job)
    with pytest.raises(SpecError, match="source"):
        planner.plan_job(_job(tmp_path).model_copy(update={"source": str(tmp_path / "nope")}))


def test_bad_settings_are_config_errors(home: Path) -> None:
    # the base class validates the profile once, when the provider is made: before any plan
    with pytest.raises(ConfigError, match="staging_bucket"):
        VertexProvider(
            Profile("gcp", "vertex", {"project": "p", "staging_bucket": "s3://x"}), Store.open()
        )


def test_dry_run_cost_without_the_google_sdk(tmp_path: Path) -> None:
    """Importing the provider and planning loads no Google SDK (the measured cost is printed)."""
    script = f"""
import sys, time, json
t0 = time.perf_counter()
from mlcloud.config import Profile
from mlcloud.store import Store
from mlcloud.specs import load_job
from providers.vertex import VertexProvider
from providers.vertex.job_plan import VertexJobContext
t1 = time.perf_counter()
p = VertexProvider(Profile("gcp", "vertex", {json.dumps(settings_for(FAKE_URL))}), Store.open())
plan = p.plan_job(load_job({str(ROOT / "examples" / "ddp" / "job.yaml")!r}))
t2 = time.perf_counter()
sdk = ("google.cloud.", "grpc", "google.api_core", "google.auth")
heavy = sorted(m for m in sys.modules if m.startswith(sdk))
print(json.dumps({{"import_s": t1 - t0, "plan_s": t2 - t1, "heavy": heavy}}))
"""
    env = {**os.environ, "MLCLOUD_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print("vertex dry-run cost:", result)
    assert result["heavy"] == []
    assert result["plan_s"] < 1.0


def test_secrets_travel_as_references(planner: VertexProvider, tmp_path: Path) -> None:
    """A Secret Manager version goes in the container env as a reference the launcher reads
    with the job's service account (a CustomJob has no secret env of its own)."""
    env = {
        "DB_PASSWORD": {"secret": "projects/p/secrets/db-password/versions/3"},
        "API_KEY": {"secret": "projects/p/secrets/api-key"},
        "MODE": "fast",
    }
    request = request_of(planner.plan_job(_job(tmp_path, env=env)))
    assert strict_roundtrip(request) == request
    (pool,) = request["customJob"]["jobSpec"]["workerPoolSpecs"]
    pairs = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
    assert {k: v for k, v in pairs.items() if not k.startswith("MLCLOUD_")} == {"MODE": "fast"}
    assert {k: v for k, v in pairs.items() if "SECRETREF" in k} == {
        "MLCLOUD_SECRETREF_DB_PASSWORD": "projects/p/secrets/db-password/versions/3",
        "MLCLOUD_SECRETREF_API_KEY": "projects/p/secrets/api-key/versions/latest",
    }
    with pytest.raises(UnsupportedFeature, match="from_env"):
        planner.plan_job(_job(tmp_path, env={"DB_PASSWORD": {"from_env": "SHELL_PW"}}))
    with pytest.raises(SpecError, match="not a secret vertex"):
        planner.plan_job(_job(tmp_path, env={"X": {"secret": "arn:aws:ssm:r:1:parameter/x"}}))
