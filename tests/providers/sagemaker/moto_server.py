"""The session's one moto server (SageMaker, S3, CloudWatch Logs, …) on 127.0.0.1.

Registered once, from tests/conftest.py, for every test that needs it (the SageMaker provider's
tests, the pipelines' and the gateway's SageMaker tests): moto's backends are process-global, so
two servers in one session would share their state and their far-end recording. The moto gaps
it fills are described in tests/providers/sagemaker/conftest.py.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.providers.sagemaker.far_end import FAR_END

ACCOUNT = "123456789012"
REGION = "us-east-1"
BUCKET = "mlcloud-test"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/mlcloud"


def backend() -> Any:
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[ACCOUNT][REGION]


def _stop_training_job(self: Any) -> Any:
    from moto.core.responses import EmptyResult
    from moto.sagemaker.exceptions import ValidationError

    name = self._get_param("TrainingJobName")
    job = self.sagemaker_backend.training_jobs.get(name)
    if job is None:
        raise ValidationError(message=f"Requested resource not found: {name}")
    if job.training_job_status != "InProgress":
        raise ValidationError(
            message=f"The request was rejected because the training job is in status "
            f"{job.training_job_status}."
        )
    job.training_job_status = "Stopping"
    job.secondary_status = "Stopping"
    return EmptyResult()


def _invoke_endpoint(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def invoke_endpoint(self: Any) -> Any:
        from moto.core.exceptions import ServiceException

        class ValidationError(ServiceException):
            code = "ValidationError"  # sagemaker-runtime's code (the control plane's differs)

        name = urllib.parse.unquote(self.path.split("/")[2])  # /endpoints/<name>/invocations
        if name not in backend().endpoints:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} not found.")
        return original(self)

    return invoke_endpoint


def _update_endpoint(self: Any) -> Any:
    from moto.core.responses import ActionResult
    from moto.sagemaker.exceptions import ValidationError

    backend = self.sagemaker_backend
    name = self._get_param("EndpointName")
    config_name = self._get_param("EndpointConfigName")
    endpoint = backend.endpoints.get(name)
    if endpoint is None:
        raise ValidationError(message=f"Could not find endpoint {name}.")
    config = backend.describe_endpoint_config(config_name)
    endpoint.endpoint_config_name = config_name
    endpoint.production_variants = endpoint._process_production_variants(
        config["ProductionVariants"]
    )
    endpoint.endpoint_status = "InService"  # SageMaker passes through Updating first
    return ActionResult({"EndpointArn": endpoint.arn})


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.moto_server import threaded_moto_server
    from moto.sagemaker import models as sm_models
    from moto.sagemaker.responses import SageMakerResponse
    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse
    from moto.server import ThreadedMotoServer

    original_create = sm_models.SageMakerModelBackend.create_training_job

    def create_training_job(self: Any, *args: Any, **kwargs: Any) -> Any:
        job = original_create(self, *args, **kwargs)
        job.training_job_status = "InProgress"
        job.secondary_status = "Starting"
        return job

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sm_models.SageMakerModelBackend, "create_training_job", create_training_job)
        mp.setattr(SageMakerResponse, "stop_training_job", _stop_training_job, raising=False)
        mp.setattr(SageMakerResponse, "update_endpoint", _update_endpoint, raising=False)
        invoke = _invoke_endpoint(SageMakerRuntimeResponse.invoke_endpoint)
        mp.setattr(SageMakerRuntimeResponse, "invoke_endpoint", invoke)
        dispatcher = threaded_moto_server.DomainDispatcherApplication
        mp.setattr(
            threaded_moto_server,
            "DomainDispatcherApplication",
            lambda create_app: FAR_END.wrap(dispatcher(create_app)),
        )
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def bucket(moto_url: str) -> str:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    return BUCKET
