"""Planning a Ray job (pure: no cluster is contacted or started) and the profile's settings."""

from __future__ import annotations

import ast
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlcloud.config import Profile
from mlcloud.errors import ConfigError, SpecError, UnsupportedFeature
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.common.staging import code_key, pack_source
from providers.ray import job_plan
from providers.ray.job_plan import RayJobContext
from providers.ray.provider import RayProvider
from tests.conftest import MLCLOUD, REPO, cli_env


def provider(**settings: Any) -> RayProvider:
    return RayProvider(Profile("onprem", "ray", settings), Store.open())


REMOTE = {"address": "http://head:8265", "token": "t0k3n"}


def job(tmp_path: Path, **fields: Any) -> TrainingJob:
    (tmp_path / "train.py").write_text("print('hi')\n")
    return TrainingJob(name="t", source=str(tmp_path), command=["python", "train.py"], **fields)


def request(plan: Any) -> dict[str, Any]:
    [step] = plan.steps
    assert step.call == job_plan.SUBMIT_JOB
    return dict(step.request)


def test_source_is_staged_under_the_clouds_digest(tmp_path: Path) -> None:
    spec = job(tmp_path)
    plan = provider(**REMOTE).plan_job(spec)
    archive = pack_source(tmp_path)
    runtime_env = request(plan)["runtime_env"]
    # the same archive, the same sha256 as SageMaker / Vertex stage it (code/<sha256>.tar.gz)
    assert runtime_env["working_dir"] == f"gcs://_ray_pkg_{archive.sha256}.tar.gz"
    assert code_key("", archive) == f"code/{archive.sha256}.tar.gz"
    context = plan.context_as(RayJobContext)
    assert [p.sha256 for p in context.packages] == [archive.sha256]
    assert "py_modules" not in runtime_env


def test_one_node_job_runs_through_the_launcher_with_the_contract(tmp_path: Path) -> None:
    spec = job(tmp_path, hyperparameters={"lr": 0.1}, env={"A": "1"}, checkpoint="auto")
    plan = provider(**REMOTE, cancel_grace=4.5).plan_job(spec)
    req = request(plan)
    assert shlex.split(req["entrypoint"]) == [
        "python", "_mlcloud/launcher.py", "--platform", "ray", "--", "python", "train.py",
    ]  # fmt: skip
    assert req["submission_id"] == f"{plan.id}-a1"
    assert req["metadata"] == {
        "mlcloud_job_id": plan.id,
        "mlcloud_name": "t",
        "mlcloud_attempt": "1",
    }
    env = req["runtime_env"]["env_vars"]
    base = f"/tmp/mlcloud-ray/jobs/{plan.id}"  # node-local default of a remote cluster
    assert env["MLCLOUD_MODEL_DIR"] == f"{base}/model"
    assert env["MLCLOUD_OUTPUT_DIR"] == f"{base}/output"
    assert env["MLCLOUD_CHECKPOINT_DIR"] == f"{base}/checkpoints"
    assert env["MLCLOUD_HPARAMS"] == '{"lr": 0.1}'
    assert env["MLCLOUD_PROVIDER_TYPE"] == "ray" and env["A"] == "1"
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "10" and env["MLCLOUD_GRACE_SECONDS"] == "4.5"


def test_storage_defaults_to_the_home_for_the_cluster_mlcloud_starts(tmp_path: Path) -> None:
    plan = provider().plan_job(job(tmp_path))
    env = request(plan)["runtime_env"]["env_vars"]
    home = Store.open().home
    assert env["MLCLOUD_MODEL_DIR"] == str(home / "ray" / "storage" / "jobs" / plan.id / "model")
    shared = provider(**REMOTE, storage="/nfs/ml/").plan_job(job(tmp_path))
    assert request(shared)["runtime_env"]["env_vars"]["MLCLOUD_MODEL_DIR"].startswith(
        f"/nfs/ml/jobs/{shared.id}/"
    )


def test_resources_become_the_entrypoint_resources(tmp_path: Path) -> None:
    spec = job(tmp_path, resources={"cpus": 2, "memory": "1Gi", "accelerators": "T4:1"})
    req = request(provider(**REMOTE).plan_job(spec))
    assert req["entrypoint_num_cpus"] == 2
    assert req["entrypoint_num_gpus"] == 1
    assert req["entrypoint_memory"] == 2**30
    assert req["entrypoint_resources"] == {"accelerator_type:T4": 0.001}
    bare = request(provider(**REMOTE).plan_job(job(tmp_path)))
    assert not [k for k in bare if k.startswith("entrypoint_")]


def test_distributed_job_runs_torchrun_agents_with_each_nodes_resources(tmp_path: Path) -> None:
    spec = job(
        tmp_path,
        nodes={"min": 1, "max": 3},
        procs_per_node=2,
        max_restarts=2,
        resources={"cpus": 4, "accelerators": "A100:2", "memory": "8Gi"},
    )
    plan = provider(**REMOTE).plan_job(spec)
    req = request(plan)
    assert shlex.split(req["entrypoint"]) == [
        "python", "-m", "mlcloud_ray.elastic", "--nodes=1:3", "--procs-per-node=2",
        "--max-restarts=2", f"--name={plan.id}", "--cpus=4", "--gpus=2",
        f"--memory={8 * 2**30}", "--accelerator-type=A100", "--", "python", "train.py",
    ]  # fmt: skip
    assert not [k for k in req if k.startswith("entrypoint_")], "the driver itself needs nothing"
    elastic = job_plan.elastic_package()
    assert req["runtime_env"]["py_modules"] == [elastic.uri]
    assert req["runtime_env"]["env_vars"]["RAY_DEDUP_LOGS"] == "0"
    context = plan.context_as(RayJobContext)
    assert context.restarts == 0, "torchrun restarts a distributed job, not mlcloud"
    assert elastic.data == job_plan.elastic_package().data, "a reproducible package"


def test_the_plan_is_json_and_prints_as_dry_run(tmp_path: Path) -> None:
    plan = provider(**REMOTE).plan_job(job(tmp_path))
    data = json.loads(plan.to_json())
    assert data["type"] == "ray" and data["steps"][0]["call"] == "JobSubmissionClient.submit_job"


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"image": "python:3.11"}, UnsupportedFeature, "image"),
        ({"inputs": {"train": "s3://bucket/data"}}, UnsupportedFeature, "s3://"),
        ({"checkpoint": "gs://bucket/ckpt"}, UnsupportedFeature, "gs://"),
        ({"output": "relative/out"}, SpecError, "absolute path"),
        ({"env": {"DB": {"from_env": "DB"}}}, UnsupportedFeature, "secret reference"),
    ],
)
def test_refusals_at_plan_time(
    tmp_path: Path, fields: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        provider(**REMOTE).plan_job(job(tmp_path, **fields))


def test_local_paths_must_exist_on_the_cluster_mlcloud_starts(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        provider().plan_job(job(tmp_path, inputs={"train": str(tmp_path / "missing")}))
    (tmp_path / "data").mkdir()
    plan = provider().plan_job(job(tmp_path, inputs={"train": str(tmp_path / "data")}))
    assert request(plan)["runtime_env"]["env_vars"]["MLCLOUD_INPUT_TRAIN"] == str(tmp_path / "data")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"address": "ray://head:10001"}, "http"),
        ({"address": "http://h:8265", "token": "a", "token_file": "/t"}, "not both"),
        ({"token": "a"}, "cluster at `address`"),
        ({"storage": "s3://bucket"}, "every node"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_settings_are_a_config_error(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        provider(**settings)


def test_dry_run_of_the_ddp_example_starts_no_cluster(tmp_path: Path) -> None:
    """``mlcloud train --dry-run`` with the ray provider plans without Ray or a cluster."""
    home = Path(os.environ["MLCLOUD_HOME"])
    out = subprocess.run(
        [*MLCLOUD, "train", str(REPO / "examples/ddp/job.yaml"), "--provider", "ray",
         "--set", "resources.accelerators=null", "--set", "nodes={min: 1, max: 2}",
         "--dry-run", "--output", "json"],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["type"] == "ray"
    assert "mlcloud_ray.elastic --nodes=1:2" in plan["steps"][0]["request"]["entrypoint"]
    assert not (home / "ray" / "cluster.json").exists(), "a dry run started a cluster"


def test_the_shipped_elastic_driver_runs_on_the_clusters_python() -> None:
    """``elastic.py`` runs on the cluster's interpreter (Ray >= 2.54 supports Python >= 3.9)
    and imports nothing of mlcloud, which the cluster may lack."""
    source = REPO / "providers" / "ray" / "elastic.py"
    vermin = shutil.which("vermin") or str(Path(sys.executable).parent / "vermin")
    out = subprocess.run(
        [vermin, "-t=3.9-", "--no-tips", "--violations", str(source)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").partition(".")[0])
    assert not imported & {"mlcloud", "providers", "serving"}, imported
