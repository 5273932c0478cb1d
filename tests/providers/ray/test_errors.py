"""The Ray provider's one error mapping (``providers/ray/errors.py``)."""

from __future__ import annotations

import pytest
import requests
from ray.exceptions import AuthenticationError

from mlcloud.errors import (
    AuthError,
    Conflict,
    NotFound,
    Origin,
    PermissionDenied,
    ProviderError,
    Throttled,
    Transient,
)
from providers.ray.errors import translate

ORIGIN = Origin("ray", "onprem")


def http(status: int, body: str) -> RuntimeError:
    """What ``JobSubmissionClient`` raises for an HTTP error."""
    return RuntimeError(f"Request failed with status code {status}: {body}.")


@pytest.mark.parametrize(
    ("exc", "cls", "retryable"),
    [
        (http(401, "Unauthorized: Missing authentication token"), AuthError, False),
        (http(403, "Forbidden: Invalid authentication token"), AuthError, False),
        (http(403, "not allowed"), PermissionDenied, False),
        (http(404, "Job with id 'x' does not exist"), NotFound, False),
        (http(400, "Job with submission_id x already exists"), Conflict, False),
        (http(409, "conflict"), Conflict, False),
        (http(429, "slow down"), Throttled, True),
        (http(503, "unavailable"), Transient, True),
        (http(400, "bad runtime_env"), ProviderError, False),
        (ConnectionError("Failed to connect to Ray at address: http://h:8265."), Transient, True),
        (requests.ConnectionError("refused"), Transient, True),
        (AuthenticationError("Authentication required: ..."), AuthError, False),
    ],
)
def test_known_errors_map_onto_the_tree(
    exc: Exception, cls: type[ProviderError], retryable: bool
) -> None:
    mapped = translate(exc, ORIGIN)
    assert type(mapped) is cls
    assert isinstance(mapped, ProviderError)
    assert mapped.retryable is retryable
    assert mapped.provider_type == "ray" and mapped.profile == "onprem"


def test_the_body_is_the_message_without_the_sdk_wrapping() -> None:
    mapped = translate(http(404, "Job with id 'x' does not exist"), ORIGIN)
    assert str(mapped) == "ray (profile 'onprem'): Job with id 'x' does not exist"
    assert isinstance(mapped, ProviderError) and mapped.code == "HTTP404"


@pytest.mark.parametrize(
    "exc", [RuntimeError("a bug of ours"), KeyError("x"), ValueError("bad"), OSError("disk")]
)
def test_unknown_errors_are_not_dressed_up(exc: Exception) -> None:
    assert translate(exc, ORIGIN) is None
