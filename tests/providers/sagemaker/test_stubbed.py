"""Calls moto does not implement, checked with botocore's Stubber.

Stubber validates each request's parameters against the real SageMaker service model (the
same JSON botocore serializes from) and returns canned responses, so these tests prove the
requests are well-formed and that the provider reacts correctly to SageMaker's answers; they do
not prove SageMaker's server-side behaviour. Error mapping is checked the same way: the
exceptions are the real ``botocore.exceptions.ClientError`` built from the stubbed error codes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from mlcloud import errors
from mlcloud.config import Profile
from mlcloud.records import JobRecord, JobState
from mlcloud.specs import Deployment, validate_spec
from mlcloud.store import Store
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.endpoint_plan import EndpointContext
from tests.providers.sagemaker.conftest import ACCOUNT, REGION, settings
from tests.providers.sagemaker.test_endpoints import model_dir

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NAME = "stubbed-0123abcd"
ARN_BASE = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
ARN = f"{ARN_BASE}:training-job/{NAME}"


def _describe(status: str, secondary: str) -> dict[str, Any]:
    return {
        "TrainingJobName": NAME,
        "TrainingJobArn": ARN,
        "ModelArtifacts": {"S3ModelArtifacts": f"s3://b/{NAME}/output/model.tar.gz"},
        "TrainingJobStatus": status,
        "SecondaryStatus": secondary,
        "AlgorithmSpecification": {"TrainingImage": "img", "TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
        "CreationTime": NOW,
    }


def _stored_job(provider: SageMakerProvider) -> JobRecord:
    return provider.store.add_job(
        JobRecord(
            id="stubbed-abc123",
            name="stubbed",
            provider=provider.name,
            type="sagemaker",
            state=JobState.RUNNING,
            native_id=NAME,
        )
    )


def test_stop_training_job_request(provider: SageMakerProvider) -> None:
    """StopTrainingJob (not in moto 5.2): Stubber checks the request against the service model."""
    job = _stored_job(provider)
    with Stubber(provider.clients.sagemaker) as stub:
        stub.add_response(
            "describe_training_job", _describe("InProgress", "Training"), {"TrainingJobName": NAME}
        )
        stub.add_response("stop_training_job", {}, {"TrainingJobName": NAME})
        assert provider.cancel_job(job.id).state is JobState.CANCELLED
        stub.assert_no_pending_responses()
        # Already cancelled: no further call at all.
        assert provider.cancel_job(job.id).state is JobState.CANCELLED


def test_stop_racing_with_completion(provider: SageMakerProvider) -> None:
    """The job completes between describe and stop: SageMaker refuses the stop; we report it."""
    job = _stored_job(provider)
    with Stubber(provider.clients.sagemaker) as stub:
        stub.add_response("describe_training_job", _describe("InProgress", "Uploading"))
        stub.add_client_error(
            "stop_training_job",
            "ValidationException",
            "The request was rejected because the training job is in status Completed.",
        )
        stub.add_response("describe_training_job", _describe("Completed", "Completed"))
        assert provider.cancel_job(job.id).state is JobState.SUCCEEDED


def test_update_endpoint_request(provider: SageMakerProvider, tmp_path: Path) -> None:
    """UpdateEndpoint (not in moto 5.2) in a blue/green redeploy: the old config and model are
    deleted only after the endpoint is InService on the new config. S3 and Application Auto
    Scaling calls still go to moto; only the SageMaker client is stubbed."""
    dep = validate_spec(
        Deployment, {"name": "ep-stub", "model": str(model_dir(tmp_path / "m"))}, "deployment"
    )
    plan = provider.plan_deploy(dep)
    ctx = plan.context_as(EndpointContext)
    model, config = ctx.model_name, ctx.config_name
    ep_arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/ep-stub"

    def endpoint(config_name: str, status: str) -> dict[str, Any]:
        return {
            "EndpointName": "ep-stub",
            "EndpointArn": ep_arn,
            "EndpointConfigName": config_name,
            "EndpointStatus": status,
            "CreationTime": NOW,
            "LastModifiedTime": NOW,
        }

    requests = {s.call: s.request for s in plan.steps}
    with Stubber(provider.clients.sagemaker) as stub:
        stub.add_response(
            "create_model",
            {"ModelArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model/{model}"},
            dict(requests["sagemaker.CreateModel"]),
        )
        stub.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint-config/{config}"},
            dict(requests["sagemaker.CreateEndpointConfig"]),
        )
        stub.add_response("describe_endpoint", endpoint("ep-stub-old", "InService"))
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": ep_arn},
            {"EndpointName": "ep-stub", "EndpointConfigName": config},
        )
        stub.add_response("describe_endpoint", endpoint(config, "Updating"))
        stub.add_response("describe_endpoint", endpoint(config, "InService"))
        stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": "ep-stub-old",
                "EndpointConfigArn": f"{ARN_BASE}:endpoint-config/ep-stub-old",
                "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "ep-stub-old"}],
                "CreationTime": NOW,
            },
            {"EndpointConfigName": "ep-stub-old"},
        )
        stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "ep-stub-old"})
        stub.add_response("delete_model", {}, {"ModelName": "ep-stub-old"})
        record = provider.deploy(plan)
        stub.assert_no_pending_responses()
    assert record.details["model_name"] == model
    assert record.native_id == ep_arn


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        ("ThrottlingException", "Rate exceeded", errors.Throttled),
        ("AccessDeniedException", "not authorized", errors.PermissionDenied),
        ("UnrecognizedClientException", "bad token", errors.AuthError),
        ("ValidationException", "Could not find training job", errors.NotFound),
        ("ResourceInUse", "name in use", errors.Conflict),
        ("InternalFailure", "oops", errors.Transient),
        ("ValidationException", "1 validation error", errors.ProviderError),
    ],
)
def test_error_mapping(
    provider: SageMakerProvider, code: str, message: str, expected: type[Exception]
) -> None:
    job = _stored_job(provider)
    with Stubber(provider.clients.sagemaker) as stub:
        stub.add_client_error("describe_training_job", code, message)
        with pytest.raises(expected) as err:
            provider.job_status(job.id)
    assert type(err.value) is expected
    assert err.value.code == code  # type: ignore[attr-defined]


def test_quota_names_the_limit(provider: SageMakerProvider) -> None:
    job = _stored_job(provider)
    message = (
        "The account-level service limit 'ml.p3.2xlarge for training job usage' is 0 Instances,"
        " with current utilization of 0 Instances and a request delta of 1 Instances."
    )
    with Stubber(provider.clients.sagemaker) as stub:
        stub.add_client_error("describe_training_job", "ResourceLimitExceeded", message)
        with pytest.raises(errors.QuotaExceeded) as err:
            provider.job_status(job.id)
    assert err.value.quota == "ml.p3.2xlarge for training job usage"
    assert err.value.hint


def test_missing_credentials_are_auth_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bucket: str
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    provider = SageMakerProvider(Profile("aws", "sagemaker", settings()), Store.open())
    job = _stored_job(provider)
    with pytest.raises(errors.AuthError) as err:
        provider.job_status(job.id)
    assert "credentials" in str(err.value)
