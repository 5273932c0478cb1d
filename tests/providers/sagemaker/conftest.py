"""moto in server mode on 127.0.0.1 (one per test session); boto3 reaches it over real HTTP.

moto 5.2 leaves a few SageMaker behaviours out; the fixture adds them to the in-process server
the way SageMaker behaves, and says so here so no test claims more than it proves:

* CreateTrainingJob: moto marks a new job Completed at once; SageMaker starts it InProgress /
  Starting. New jobs start InProgress here, and tests move them on (see ``set_job_status``).
* StopTrainingJob and UpdateEndpoint: not implemented by moto. Handlers are added to moto's
  SageMaker responder so the CLI/conformance paths can run end to end; the request shapes of
  both are separately checked against the real service model with botocore's Stubber
  (tests/providers/sagemaker/test_stubbed.py).
* InvokeEndpoint: moto answers any endpoint name, existing or not, from a queue of canned
  results (its endpoint-results API) and remembers each answer per request body. Here an
  unknown endpoint is refused the way SageMaker refuses it (ValidationError "Endpoint <name> of
  account <id> not found."), and ``serve_deployed_model`` plays the serving container: it loads
  the model the endpoint's config points at, from S3, and queues its answer.

Every request the server reads is recorded at the server itself (``far_end.FAR_END``, wrapping
moto's WSGI application), which is what the conformance ``received`` hooks decode.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcloud.config import Profile
from mlcloud.store import Store
from tests.providers.sagemaker.far_end import FAR_END, Recorder

# moto_url and bucket: the session's one moto server, registered by tests/conftest.py
from tests.providers.sagemaker.moto_server import ACCOUNT, BUCKET, REGION, ROLE, backend


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, moto_url: str, tmp_path: Path) -> str:
    """Dummy credentials and boto3's standard endpoint override; a temp MLCLOUD_HOME."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("MLCLOUD_HOME", str(tmp_path / "mlcloud-home"))
    return moto_url


@pytest.fixture(autouse=True)
def far_end(moto_url: str) -> Recorder:
    """What the moto server received during this test (recorded at the server)."""
    FAR_END.clear()
    return FAR_END


def settings(**extra: Any) -> dict[str, Any]:
    return {
        "region": REGION,
        "role_arn": ROLE,
        "bucket": BUCKET,
        "serving_image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/mlcloud-serve:1",
        "log_poll_seconds": 0.05,
        "wait_poll_seconds": 0.05,
        "endpoint_wait_seconds": 10,
        "tags": {"team": "ml"},
        **extra,
    }


@pytest.fixture
def provider(bucket: str, aws_env: str) -> Iterator[Any]:
    from providers.sagemaker import SageMakerProvider

    store = Store.open()
    yield SageMakerProvider(Profile(name="aws", type="sagemaker", settings=settings()), store)
    store.close()


def set_job_status(
    native_name: str,
    status: str,
    secondary: str,
    failure: str | None = None,
    transitions: list[str] | None = None,
) -> None:
    """Move a training job on the way SageMaker would."""
    job = backend().training_jobs[native_name]
    job.training_job_status = status
    job.secondary_status = status if secondary is None else secondary
    if failure is not None:
        job.failure_reason = failure
    if transitions is not None:
        job.secondary_status_transitions = [
            {"Status": s, "StartTime": job.creation_time, "StatusMessage": s} for s in transitions
        ]


def seed_logs(native_name: str, lines: list[str], host: str = "algo-1") -> None:
    """Write lines into CloudWatch the way a SageMaker training container does."""
    import time

    import boto3

    logs = boto3.client("logs", region_name=REGION)
    group = "/aws/sagemaker/TrainingJobs"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    stream = f"{native_name}/{host}-1700000000"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)],
    )


def queue_endpoint_results(moto_url: str, bodies: list[Any]) -> None:
    """moto's endpoint-results API: the next InvokeEndpoint calls answer these bodies."""
    payload = {
        "account_id": ACCOUNT,
        "region": REGION,
        "results": [
            {
                "Body": json.dumps(body),
                "ContentType": "application/json",
                "InvokedProductionVariant": "AllTraffic",
                "CustomAttributes": "",
            }
            for body in bodies
        ],
    }
    req = urllib.request.Request(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201 or resp.status == 200


def serve_deployed_model(moto_url: str, endpoint: str, payload: dict[str, Any]) -> Any:
    """Play the serving container of ``endpoint``: load the model its config serves (the
    model.tar.gz the deploy put in S3), answer ``payload`` with it, and queue that answer for
    the next InvokeEndpoint. moto remembers each answer per request body: those are forgotten
    first, because a switched endpoint serves another model."""
    import tempfile

    import boto3
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    from providers.common.staging import safe_extract

    client = functools.partial(
        boto3.client,
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    sm, s3 = client("sagemaker"), client("s3")
    config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    variants = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    variant = max(variants, key=lambda v: v.get("InitialVariantWeight", 1.0))  # the main one
    model = sm.describe_model(ModelName=variant["ModelName"])
    bucket, _, key = model["PrimaryContainer"]["ModelDataUrl"].removeprefix("s3://").partition("/")
    data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tempfile.TemporaryDirectory() as tmp:
        safe_extract(data, Path(tmp))
        container_env = model["PrimaryContainer"].get("Environment") or {}
        answer = json.loads(_run_container(Path(tmp), json.dumps(payload), container_env))
    # moto 5.2 files its answers under the endpoint name its handler reads from the params,
    # which is None for this path parameter: forget them all.
    sagemakerruntime_backends[ACCOUNT][REGION].results.clear()
    sagemakerruntime_backends[ACCOUNT][REGION].results_queue.clear()  # answers not taken yet
    queue_endpoint_results(moto_url, [answer])
    return answer


_CONTAINER = """
import json, sys
from pathlib import Path
from serving.loaders import load_model
instances = json.loads(sys.argv[2])["instances"]
print(json.dumps({"predictions": load_model(Path(sys.argv[1])).predict(instances)}))
"""


def _run_container(model_dir: Path, payload: str, container_env: dict[str, str]) -> str:
    """The serving container's answer: mlcloud's loader in a process of its own (one model per
    process, as in the container: an in-process import would keep the first model's module)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    argv = [sys.executable, "-c", _CONTAINER, str(model_dir), payload]
    env = {**os.environ, **container_env, "PYTHONPATH": str(repo)}  # the model's Environment
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=True)
    return done.stdout
