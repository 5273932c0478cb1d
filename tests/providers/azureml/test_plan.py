"""plan_job: the command job REST body, golden plans, and what is refused at plan time."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlcloud.errors import ConfigError, SpecError, UnsupportedFeature
from mlcloud.specs import TrainingJob, load_job
from mlcloud.store import Store
from providers.azureml.job_plan import JobContext
from tests.providers.azureml.conftest import make_provider, write_source

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "golden" / "azureml"


def _golden_text(plan: Any) -> str:
    text = plan.to_json().replace(plan.id, "<id>").replace(str(REPO), "<repo>")
    return text + "\n"


@pytest.mark.parametrize("example", ["iris", "ddp"])
def test_golden_plans(example: str, store: Store) -> None:
    provider = make_provider(store, compute="serverless")
    plan = provider.plan_job(load_job(REPO / "examples" / example / "job.yaml"))
    text = _golden_text(plan)
    path = GOLDEN / f"{example}.json"
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing {path}; regenerate with MLCLOUD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), (
        f"plan changed; if intended: MLCLOUD_UPDATE_GOLDEN=1 pytest {__file__}"
    )
    # the body parses back through the SDK's own REST model into a command job
    from azure.ai.ml._restclient.arm_ml_service.models import JobBase
    from azure.ai.ml.entities import Job

    entity = Job._from_rest_object(JobBase({"name": plan.id, **plan.steps[0].request}))
    assert entity.command == plan.steps[0].request["properties"]["command"]


def test_ddp_plan_has_two_spot_instances_and_pytorch(store: Store) -> None:
    provider = make_provider(store, compute="serverless")
    plan = provider.plan_job(load_job(REPO / "examples" / "ddp" / "job.yaml"))
    assert [s.call for s in plan.steps] == ["jobs.CreateOrUpdate"]
    props = plan.steps[0].request["properties"]
    assert props["jobType"] == "Command"
    assert props["resources"]["instanceCount"] == 2
    assert props["resources"]["instanceType"] == "Standard_NC4as_T4_v3"  # T4:1, 4 cpus, 16Gi
    assert props["distribution"] == {"distributionType": "PyTorch", "processCountPerInstance": 1}
    assert props["queueSettings"] == {"jobTier": "Spot"}
    assert props["limits"] == {"jobLimitsType": "Command", "timeout": "PT2H"}
    assert props["environmentId"] == "azureml:AzureML-acpt-pytorch-2.3-cuda12.1@latest"
    assert props["outputs"]["checkpoints"]["uri"].endswith(f"/mlcloud/jobs/{plan.id}/checkpoints")
    assert (
        "--distributed" in props["command"]
        and "checkpoints=${{outputs.checkpoints}}" in props["command"]
    )
    assert props["tags"] == {"mlcloud-job-id": plan.id, "mlcloud-attempt": "1"}
    env = props["environmentVariables"]
    assert env["MLCLOUD_JOB_ID"] == plan.id and env["MLCLOUD_PROVIDER_TYPE"] == "azureml"
    assert json.loads(env["MLCLOUD_HPARAMS"])["steps"] == 300
    assert "computeId" not in props  # serverless: no cluster


def test_cluster_compute_and_local_inputs(provider: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.csv").write_text("1\n")
    job = TrainingJob(
        name="t",
        source=str(write_source(tmp_path / "src")),
        command=["python", "train.py", "--lr", "0.1"],
        image="myacr.azurecr.io/train:1",
        inputs={"train": str(data), "extra": "azureml://datastores/ds/paths/extra/"},
        procs_per_node=2,
    )
    plan = provider.plan_job(job)
    props = plan.steps[0].request["properties"]
    assert props["computeId"] == (
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
        "workspaces/ws1/computes/cpu-cluster"
    )
    assert props["inputs"]["train"] == {"jobInputType": "uri_folder", "uri": str(data)}
    assert props["inputs"]["extra"]["uri"] == "azureml://datastores/ds/paths/extra"
    assert props["environmentId"].startswith(
        "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg/providers/Microsoft.MachineLearningServices/"
        "workspaces/ws1/environments/CliV2AnonymousEnvironment/versions/"
    )
    assert props["command"] == (
        "python _mlcloud/launcher.py --platform azureml --nproc-per-node 2 --distributed "
        "--input 'extra=${{inputs.extra}}' --input 'train=${{inputs.train}}' "
        "--output 'model=${{outputs.model}}' --output 'output=${{outputs.output}}' "
        "-- python train.py --lr 0.1"
    )
    assert plan.context_as(JobContext).model_dir.endswith(f"/mlcloud/jobs/{plan.id}/model")


def test_plan_is_pure(provider: Any, azure: Any, tmp_path: Path) -> None:
    job = TrainingJob(
        name="t",
        source=str(write_source(tmp_path)),
        command=["python", "train.py"],
        framework={"name": "sklearn", "version": "1.5"},
    )
    provider.plan_job(job)
    assert azure.transport.requests == []  # no network at all
    assert provider.store.list_jobs() == []


@pytest.mark.parametrize(
    ("change", "feature"),
    [
        ({"nodes": {"min": 1, "max": 3}}, "elastic"),
        ({"inputs": {"train": "s3://bucket/data"}}, "input"),
        ({"checkpoint": "/local/ckpt"}, "checkpoint"),
        ({"output": "gs://bucket/out"}, "output"),
        ({"framework": {"name": "xgboost", "version": "2.0"}}, "framework"),
        ({"resources": {"accelerators": "TPU:8"}}, "accelerator"),
        ({"resources": {"cpus": 1000}}, "resources"),
    ],
)
def test_unsupported_features_at_plan_time(
    change: dict[str, Any], feature: str, store: Store, tmp_path: Path
) -> None:
    provider = make_provider(store, compute="serverless")
    base: dict[str, Any] = {
        "name": "t",
        "source": str(write_source(tmp_path)),
        "command": ["python", "train.py"],
        "framework": {"name": "sklearn", "version": "1.5"},
    }
    with pytest.raises(UnsupportedFeature) as err:
        provider.plan_job(TrainingJob.model_validate({**base, **change}))
    assert feature in str(err.value) and err.value.hint
    if feature == "elastic":
        assert "instance_count" in str(err.value.hint)
    assert err.value.provider.startswith("azureml")


def test_missing_environment_and_bad_settings(store: Store, tmp_path: Path) -> None:
    provider = make_provider(store)
    job = TrainingJob(name="t", source=str(write_source(tmp_path)), command=["python", "train.py"])
    with pytest.raises(SpecError, match="environment"):
        provider.plan_job(job)
    provider = make_provider(store, environment="AzureML-sklearn-1.5:3")
    props = provider.plan_job(job).steps[0].request["properties"]
    assert props["environmentId"] == "azureml:AzureML-sklearn-1.5:3"
    with pytest.raises(ConfigError, match="compute"):
        make_provider(store, compute="bad name!")
    with pytest.raises(ConfigError, match="unknown_key"):
        make_provider(store, unknown_key=1)


def test_provider_module_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, providers.azureml, mlcloud;"
        "heavy=[m for m in sys.modules if m.startswith(('azure.ai.ml','azure.identity'))];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_secrets_travel_as_references(provider: Any, tmp_path: Path) -> None:
    """A Key Vault secret goes in the environment variables as a reference the launcher reads
    with the compute's managed identity (a command job has no Key Vault variables)."""
    vault = "https://team-vault.vault.azure.net/secrets/db-password"
    job = TrainingJob(
        name="t",
        source=str(write_source(tmp_path / "src")),
        command=["python", "train.py"],
        image="myacr.azurecr.io/train:1",
        env={"DB_PASSWORD": {"secret": vault + "/"}, "MODE": "fast"},
    )
    env = provider.plan_job(job).steps[0].request["properties"]["environmentVariables"]
    assert {k: v for k, v in env.items() if not k.startswith("MLCLOUD_")} == {"MODE": "fast"}
    assert env["MLCLOUD_SECRETREF_DB_PASSWORD"] == vault
    for env, error in (
        ({"P": {"from_env": "SHELL_PW"}}, "from_env"),
        ({"P": {"secret": "https://evil.example/secrets/x"}}, "not a secret azureml"),
    ):
        with pytest.raises((UnsupportedFeature, SpecError), match=error):
            provider.plan_job(TrainingJob.model_validate({**job.model_dump(), "env": env}))
