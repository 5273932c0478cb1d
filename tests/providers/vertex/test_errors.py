"""Google API errors, as the real REST client raises them from the fake's error bodies, mapped
onto the mlcloud tree (providers/vertex/errors.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mlcloud import errors as e
from mlcloud.config import Profile
from mlcloud.store import Store
from providers.vertex import VertexProvider
from providers.vertex.errors import translate
from tests.fakes.vertex import FakeVertex
from tests.providers.vertex.conftest import settings_for

JOB = "projects/mlcloud-test/locations/us-central1/customJobs/42"
QUOTA_METRIC = "aiplatform.googleapis.com/custom_model_training_nvidia_t4_gpus"


def error_info(reason: str, **metadata: str) -> list[dict[str, Any]]:
    return [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "aiplatform.googleapis.com",
            "metadata": metadata,
        }
    ]


def raised(
    provider: VertexProvider,
    fake: FakeVertex,
    status: str,
    details: list[dict[str, Any]] | None = None,
) -> e.ProviderError:
    fake.inject("GET", r"/customJobs/42$", status, f"injected {status}", details=details)
    with pytest.raises(Exception) as info:
        provider.clients.jobs.get_custom_job(name=JOB)  # no retry: see the raw SDK error
    err = translate(info.value, provider.origin)
    assert isinstance(err, e.ProviderError), f"{type(info.value)} is not mapped: {err!r}"
    assert (err.provider_type, err.profile) == ("vertex", provider.name)
    return err


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        ("PERMISSION_DENIED", e.PermissionDenied, False),
        ("NOT_FOUND", e.NotFound, False),
        ("UNAUTHENTICATED", e.AuthError, False),
        ("ALREADY_EXISTS", e.Conflict, False),
        ("FAILED_PRECONDITION", e.Conflict, False),
        ("UNAVAILABLE", e.Transient, True),
        ("DEADLINE_EXCEEDED", e.Transient, True),
        ("INTERNAL", e.Transient, True),
        ("INVALID_ARGUMENT", e.ProviderError, False),
    ],
)
def test_status_mapping(
    provider: VertexProvider, fake: FakeVertex, status: str, cls: type, retryable: bool
) -> None:
    err = raised(provider, fake, status)
    assert type(err) is cls, err
    assert err.retryable is retryable
    if status == "UNAUTHENTICATED":
        # google-auth answers a 401 by refreshing the credentials; anonymous ones cannot be
        return
    assert err.code == status
    assert f"injected {status}" in str(err) and "http://" not in str(err)


def test_rate_limit_vs_quota(provider: VertexProvider, fake: FakeVertex) -> None:
    rate = raised(provider, fake, "RESOURCE_EXHAUSTED", details=error_info("RATE_LIMIT_EXCEEDED"))
    assert isinstance(rate, e.Throttled) and rate.retryable
    quota = raised(
        provider,
        fake,
        "RESOURCE_EXHAUSTED",
        details=error_info("QUOTA_EXCEEDED", quota_metric=QUOTA_METRIC),
    )
    assert isinstance(quota, e.QuotaExceeded) and not quota.retryable
    assert quota.quota == QUOTA_METRIC and QUOTA_METRIC in (quota.hint or "")
    failure = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"subject": "project:mlcloud-test", "description": "GPUs"}],
        }
    ]
    quota = raised(provider, fake, "RESOURCE_EXHAUSTED", details=failure)
    assert isinstance(quota, e.QuotaExceeded) and quota.quota == "project:mlcloud-test"


def test_connection_refused_is_transient(home: object) -> None:
    provider = VertexProvider(
        Profile("g", "vertex", settings_for("http://127.0.0.1:9")), Store.open()
    )
    with pytest.raises(Exception) as info:
        provider.clients.jobs.get_custom_job(name=JOB, timeout=5)
    assert isinstance(translate(info.value, provider.origin), e.Transient)


def test_provider_calls_raise_mlcloud_errors(provider: VertexProvider, fake: FakeVertex) -> None:
    from mlcloud.specs import Deployment

    with pytest.raises(e.PermissionDenied) as err:
        fake.inject("POST", r"/models:upload$", "PERMISSION_DENIED", "no aiplatform.models.upload")
        provider.deploy(
            provider.plan_deploy(Deployment(name="x", model="gs://mlcloud-staging/models/x"))
        )
    assert err.value.hint and err.value.provider_type == "vertex"
    assert err.value.profile == provider.name and "no aiplatform.models.upload" in str(err.value)


def test_bugs_are_not_disguised(provider: VertexProvider) -> None:
    assert translate(KeyError("a bug of ours"), provider.origin) is None
    with pytest.raises(KeyError), provider.mapped():
        raise KeyError("a bug of ours")
