"""errors.translate: the one mapping of botocore exceptions; anything else is not its business."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from mlcloud import errors
from mlcloud.records import JobRecord, JobState
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.errors import translate

ORIGIN = errors.Origin("sagemaker", "aws")


def _client_error(code: str, message: str, status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "DescribeTrainingJob")


@pytest.mark.parametrize(
    "exc", [KeyError("TrainingJobArn"), ValueError("bad"), TypeError("x"), RuntimeError("bug")]
)
def test_unknown_exceptions_are_not_translated(exc: Exception) -> None:
    assert translate(exc, ORIGIN) is None


def test_known_ones_carry_their_origin() -> None:
    found = translate(_client_error("ResourceInUse", "name in use"), ORIGIN)
    assert isinstance(found, errors.Conflict)
    assert (found.provider_type, found.profile, found.code) == ("sagemaker", "aws", "ResourceInUse")
    gone = translate(_client_error("Whatever", "no such thing", 404), ORIGIN)
    assert isinstance(gone, errors.NotFound)
    down = translate(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), ORIGIN)
    assert isinstance(down, errors.Transient) and down.retryable
    creds = translate(NoCredentialsError(), ORIGIN)
    assert isinstance(creds, errors.AuthError) and creds.hint


def test_a_bug_inside_a_provider_call_is_reraised_untouched(provider: SageMakerProvider) -> None:
    """A KeyError raised while talking to AWS (here: by a botocore event handler, standing in
    for a bug) reaches the caller as itself, never dressed up as a ProviderError."""
    record = provider.store.add_job(
        JobRecord(
            id="bug-abc123",
            name="bug",
            provider=provider.name,
            type="sagemaker",
            state=JobState.RUNNING,
            native_id="bug-0123abcd",
        )
    )
    bug = KeyError("a bug")

    def raise_bug(**_: Any) -> None:
        raise bug

    sm = provider.clients.sagemaker
    sm.meta.events.register("before-call.sagemaker.DescribeTrainingJob", raise_bug)
    try:
        with pytest.raises(KeyError) as err:
            provider.job_status(record.id)
    finally:
        sm.meta.events.unregister("before-call.sagemaker.DescribeTrainingJob", raise_bug)
    assert err.value is bug
    assert not isinstance(err.value, errors.MlcloudError)
