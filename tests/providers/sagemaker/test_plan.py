"""plan_job → CreateTrainingJob kwargs: pure, complete, and within SageMaker's limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlcloud.config import Profile
from mlcloud.errors import ConfigError, SpecError, UnsupportedFeature
from mlcloud.specs import TrainingJob, load_job, validate_spec
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.job_plan import ARG_MAX, BOOTSTRAP_ENV, ENV_VALUE_MAX, JobContext
from tests.providers.sagemaker.conftest import BUCKET, ROLE, settings

REPO = Path(__file__).resolve().parents[3]


def _job(tmp_path: Path, **fields: Any) -> TrainingJob:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "train.py").write_text("print('hi')\n")
    data = {"name": "demo", "source": str(src), "command": ["python", "train.py"], **fields}
    return validate_spec(TrainingJob, data, "job")


def _request(provider: SageMakerProvider, job: TrainingJob) -> dict[str, Any]:
    return dict(provider.plan_job(job).steps[0].request)


def test_import_loads_no_aws_sdk() -> None:
    code = (
        "import sys, mlcloud, providers.sagemaker\n"
        "from mlcloud import registry\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'moto')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)


def test_ddp_example_maps_every_feature(provider: SageMakerProvider) -> None:
    plan = provider.plan_job(load_job(REPO / "examples/ddp/job.yaml"))
    assert [s.call for s in plan.steps] == ["sagemaker.CreateTrainingJob"]
    req = plan.steps[0].request
    assert req["TrainingJobName"].startswith("ddp-") and len(req["TrainingJobName"]) == 12
    assert req["RoleArn"] == ROLE
    assert req["ResourceConfig"] == {
        "InstanceType": "ml.g4dn.xlarge",  # 4 vCPU, 16 GiB, 1 T4: the cheapest fit
        "InstanceCount": 2,
        "VolumeSizeInGB": 30,
    }
    assert req["EnableManagedSpotTraining"] is True
    stop = req["StoppingCondition"]
    assert stop["MaxRuntimeInSeconds"] == 7200
    assert stop["MaxWaitTimeInSeconds"] >= stop["MaxRuntimeInSeconds"]
    assert req["CheckpointConfig"] == {
        "S3Uri": f"s3://{BUCKET}/mlcloud/ddp/checkpoints",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert req["RetryStrategy"] == {"MaximumRetryAttempts": 3}
    image = req["AlgorithmSpecification"]["TrainingImage"]
    assert "pytorch-training:2.3.0-gpu" in image
    args = req["AlgorithmSpecification"]["ContainerArguments"]
    assert "--distributed" in args and args[-2:] == ["python", "train.py"]
    env = req["Environment"]
    assert env["MLCLOUD_JOB_ID"] == plan.id
    assert env["MLCLOUD_PROVIDER_TYPE"] == "sagemaker"
    assert env["MLCLOUD_CHECKPOINT"] == "1"
    assert json.loads(env["MLCLOUD_HPARAMS"])["steps"] == 300
    assert json.loads(req["HyperParameters"]["lr"]) == 0.05
    tags = {t["Key"]: t["Value"] for t in req["Tags"]}
    assert tags["mlcloud:job-id"] == plan.id and tags["team"] == "ml"
    code = req["InputDataConfig"][0]
    assert code["ChannelName"] == "mlcloud_code"
    archive = plan.context_as(JobContext).archive
    assert code["DataSource"]["S3DataSource"]["S3Uri"] == (
        f"s3://{BUCKET}/mlcloud/code/{archive.sha256}.tar.gz"
    )
    assert "_mlcloud/launcher.py" in archive.files and "train.py" in archive.files


def test_container_command_fits_sagemaker_limits(provider: SageMakerProvider) -> None:
    """botocore does not check max lengths; the real API rejects >256-char arguments."""
    req = _request(provider, load_job(REPO / "examples/iris/job.yaml"))
    spec = req["AlgorithmSpecification"]
    for item in spec["ContainerEntrypoint"] + spec["ContainerArguments"]:
        assert len(item) <= ARG_MAX
    assert all(len(v) <= ENV_VALUE_MAX for v in req["Environment"].values())
    chunks = [k for k in sorted(req["Environment"]) if k.startswith(BOOTSTRAP_ENV)]
    script = "".join(req["Environment"][k] for k in chunks)
    from providers.common.bootstrap import BOOTSTRAP_SRC

    assert script == BOOTSTRAP_SRC


def test_iris_local_input_becomes_a_content_addressed_channel(provider: SageMakerProvider) -> None:
    plan = provider.plan_job(load_job(REPO / "examples/iris/job.yaml"))
    req = plan.steps[0].request
    train = next(c for c in req["InputDataConfig"] if c["ChannelName"] == "train")
    uri = train["DataSource"]["S3DataSource"]["S3Uri"]
    (upload,) = plan.context_as(JobContext).uploads
    assert uri == f"s3://{BUCKET}/{upload.key_prefix}/" and upload.sha256 in uri
    assert req["ResourceConfig"]["InstanceType"] == "ml.m5.large"
    assert "sagemaker-scikit-learn" in req["AlgorithmSpecification"]["TrainingImage"]
    assert "EnableManagedSpotTraining" not in req and "RetryStrategy" not in req


def test_plan_writes_nothing(provider: SageMakerProvider, tmp_path: Path) -> None:
    def keys() -> list[str]:
        listing = provider.clients.s3.list_objects_v2(Bucket=BUCKET)
        return [o["Key"] for o in listing.get("Contents", [])]

    before = keys()
    provider.plan_job(_job(tmp_path, inputs={"train": str(tmp_path / "src")}))
    assert keys() == before
    assert provider.store.list_jobs() == []


def test_name_follows_content_not_paths(provider: SageMakerProvider, tmp_path: Path) -> None:
    job = _job(tmp_path)
    first = _request(provider, job)["TrainingJobName"]
    assert _request(provider, job)["TrainingJobName"] == first
    (Path(job.source) / "train.py").write_text("print('changed')\n")
    assert _request(provider, job)["TrainingJobName"] != first


def test_elastic_nodes_are_refused(provider: SageMakerProvider, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature) as err:
        provider.plan_job(_job(tmp_path, nodes={"min": 1, "max": 4}))
    assert "fixed" in (err.value.hint or "")


def test_local_checkpoint_is_refused(provider: SageMakerProvider, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature) as err:
        provider.plan_job(_job(tmp_path, checkpoint=str(tmp_path / "ckpt")))
    assert "s3://" in (err.value.hint or "")


def test_s3_checkpoint_output_and_input_used_as_is(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    req = _request(
        provider,
        _job(
            tmp_path,
            checkpoint="s3://other/ckpt",
            output="s3://other/out",
            inputs={"train": "s3://data/train/"},
        ),
    )
    assert req["CheckpointConfig"]["S3Uri"] == "s3://other/ckpt"
    assert req["OutputDataConfig"] == {"S3OutputPath": "s3://other/out"}
    assert req["InputDataConfig"][1]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://data/train/"


def test_other_schemes_and_reserved_channel(provider: SageMakerProvider, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature):
        provider.plan_job(_job(tmp_path, inputs={"train": "gs://bucket/x"}))
    with pytest.raises(SpecError):
        provider.plan_job(_job(tmp_path, inputs={"mlcloud_code": "s3://b/x"}))


def test_instance_override_and_explicit_image(provider: SageMakerProvider, tmp_path: Path) -> None:
    req = _request(
        provider,
        _job(
            tmp_path,
            image="my/image:1",
            resources={"cpus": 2, "instance_type": {"sagemaker": "ml.c5.9xlarge"}},
        ),
    )
    assert req["ResourceConfig"]["InstanceType"] == "ml.c5.9xlarge"
    assert req["AlgorithmSpecification"]["TrainingImage"] == "my/image:1"


def test_restarts_beyond_sagemaker_limit(provider: SageMakerProvider, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature):
        provider.plan_job(_job(tmp_path, max_restarts=31))


def test_missing_settings_are_config_errors(tmp_path: Path) -> None:
    from mlcloud.store import Store

    bare = SageMakerProvider(Profile("aws", "sagemaker", {"region": "us-east-1"}), Store.open())
    with pytest.raises(ConfigError) as err:
        bare.plan_job(_job(tmp_path))
    assert "role_arn" in str(err.value)
    with pytest.raises(ConfigError):
        SageMakerProvider(Profile("aws", "sagemaker", {"bogus": 1}), Store.open())


def test_settings_endpoint_url_wins(tmp_path: Path, aws_env: str, bucket: str) -> None:
    from mlcloud.store import Store

    p = SageMakerProvider(Profile("aws", "sagemaker", settings(endpoint_url=aws_env)), Store.open())
    assert p.clients.s3.meta.endpoint_url == aws_env
    assert p.clients.s3 is p.clients.s3  # one client per provider


def test_explicit_instance_without_the_asked_gpus(
    provider: SageMakerProvider, tmp_path: Path
) -> None:
    with pytest.raises(SpecError):
        provider.plan_job(
            _job(
                tmp_path,
                resources={"accelerators": "T4:1", "instance_type": {"sagemaker": "ml.m5.large"}},
            )
        )


def test_secrets_travel_as_references(provider: SageMakerProvider, tmp_path: Path) -> None:
    """A Secrets Manager / SSM ARN goes in the Environment as a reference the launcher reads
    with the job's role; no value is in the request. ``{from_env}`` would put a value there."""
    secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:db-password-AbCdEf"
    param = "arn:aws:ssm:us-east-1:123456789012:parameter/team/api-key"
    env = {"DB_PASSWORD": {"secret": secret}, "API_KEY": {"secret": param}, "MODE": "fast"}
    request = _request(provider, _job(tmp_path, env=env))
    user = {k: v for k, v in request["Environment"].items() if not k.startswith("MLCLOUD_")}
    refs = {k: v for k, v in request["Environment"].items() if "SECRETREF" in k}
    assert user == {"MODE": "fast"}
    assert refs == {"MLCLOUD_SECRETREF_DB_PASSWORD": secret, "MLCLOUD_SECRETREF_API_KEY": param}
    with pytest.raises(UnsupportedFeature, match=r"env\.DB_PASSWORD: \{from_env: SHELL_PW\}"):
        provider.plan_job(_job(tmp_path, env={"DB_PASSWORD": {"from_env": "SHELL_PW"}}))
    with pytest.raises(SpecError, match="not a secret sagemaker") as err:
        provider.plan_job(_job(tmp_path, env={"X": {"secret": "projects/p/secrets/x"}}))
    assert err.value.hint and "arn:aws:secretsmanager:" in err.value.hint
