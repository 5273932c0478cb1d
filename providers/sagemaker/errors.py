"""botocore exceptions → the mlcloud error tree, in this one place.

botocore's "standard" retry mode has already retried throttling, 5xx and dropped connections by
the time an exception reaches us, so nothing here retries: it only classifies.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from mlcloud.errors import (
    AuthError,
    ConfigError,
    Conflict,
    MlcloudError,
    NotFound,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    Throttled,
    Transient,
)

PROVIDER = "sagemaker"
P = ParamSpec("P")
R = TypeVar("R")

_THROTTLED = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
}
_QUOTA = {"ResourceLimitExceeded", "ServiceQuotaExceededException", "LimitExceededException"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden"}
_AUTH = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "InvalidAccessKeyId",
}
_NOT_FOUND = {
    "ResourceNotFound",
    "ResourceNotFoundException",
    "ObjectNotFoundException",
    "NoSuchKey",
    "NoSuchBucket",
    "NotFound",
    "404",
}
_CONFLICT = {"ResourceInUse", "ConflictException", "ConcurrentUpdateException"}
_TRANSIENT = {
    "InternalFailure",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}
# SageMaker reports most "no such X" and "X exists" as a ValidationException with a sentence.
_VALIDATION_NOT_FOUND = re.compile(r"could not find|does not exist|not found", re.IGNORECASE)
_VALIDATION_CONFLICT = re.compile(r"already exist|cannot create already", re.IGNORECASE)
_QUOTA_NAME = re.compile(r"limit '([^']+)'")

_HINTS = {
    AuthError: "check your AWS credentials (aws sts get-caller-identity, AWS_PROFILE)",
    PermissionDenied: "grant the caller (or the profile's role_arn) the SageMaker/S3 permission",
    QuotaExceeded: "request an increase in Service Quotas, or pick a smaller instance type",
    Throttled: "too many AWS API calls; wait and try again",
    Transient: "AWS did not answer; try again (the same request is idempotent)",
}


def map_client_error(err: Any) -> ProviderError:
    """A ``botocore.exceptions.ClientError`` → the matching ProviderError subclass."""
    error = err.response.get("Error", {}) if hasattr(err, "response") else {}
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or err)
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    text = f"{code}: {message}"
    if code in _THROTTLED:
        return Throttled(text, provider=PROVIDER, code=code, hint=_HINTS[Throttled])
    if code in _QUOTA:
        m = _QUOTA_NAME.search(message)
        return QuotaExceeded(
            text,
            provider=PROVIDER,
            code=code,
            quota=m.group(1) if m else None,
            hint=_HINTS[QuotaExceeded],
        )
    if code in _AUTH:
        return AuthError(text, provider=PROVIDER, code=code, hint=_HINTS[AuthError])
    if code in _DENIED or status == 403:
        return PermissionDenied(text, provider=PROVIDER, code=code, hint=_HINTS[PermissionDenied])
    if code in _NOT_FOUND or status == 404:
        return NotFound(text, provider=PROVIDER, code=code)
    if code in _CONFLICT:
        return Conflict(text, provider=PROVIDER, code=code)
    if code in ("ValidationException", "ValidationError"):
        if _VALIDATION_NOT_FOUND.search(message):
            return NotFound(text, provider=PROVIDER, code=code)
        if _VALIDATION_CONFLICT.search(message):
            return Conflict(text, provider=PROVIDER, code=code)
        return ProviderError(text, provider=PROVIDER, code=code)
    if code in _TRANSIENT or status >= 500:
        return Transient(text, provider=PROVIDER, code=code, hint=_HINTS[Transient])
    return ProviderError(text, provider=PROVIDER, code=code)


def map_error(err: BaseException) -> MlcloudError:
    """Any exception raised while talking to AWS → an MlcloudError (never a bare SDK error)."""
    if isinstance(err, MlcloudError):
        return err
    from botocore import exceptions as bx

    if isinstance(err, bx.ClientError):
        return map_client_error(err)
    if isinstance(err, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AuthError(
            f"no usable AWS credentials ({type(err).__name__})",
            provider=PROVIDER,
            code=type(err).__name__,
            hint=_HINTS[AuthError],
        )
    token_errors = tuple(
        getattr(bx, name)
        for name in ("TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError")
        if hasattr(bx, name)
    )
    if token_errors and isinstance(err, token_errors):
        return AuthError(
            f"AWS login expired ({type(err).__name__})",
            provider=PROVIDER,
            code=type(err).__name__,
            hint="run: aws sso login",
        )
    if isinstance(err, (bx.ProfileNotFound, bx.NoRegionError, bx.InvalidConfigError)):
        return ConfigError(str(err), hint="check the AWS profile/region in the sagemaker profile")
    if isinstance(
        err,
        (
            bx.EndpointConnectionError,
            bx.ConnectTimeoutError,
            bx.ReadTimeoutError,
            bx.ConnectionClosedError,
            bx.HTTPClientError,
        ),
    ):
        return Transient(
            f"cannot reach AWS: {err}",
            provider=PROVIDER,
            code=type(err).__name__,
            hint=_HINTS[Transient],
        )
    if isinstance(err, bx.ParamValidationError):
        return ProviderError(
            f"invalid AWS request: {err}", provider=PROVIDER, code="ParamValidation"
        )
    return ProviderError(
        f"unexpected {type(err).__name__}: {err}", provider=PROVIDER, code=type(err).__name__
    )


def mapped(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public provider method so that only MlcloudError escapes it."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MlcloudError:
            raise
        except Exception as e:
            raise map_error(e) from e

    return wrapper


def is_transient(err: BaseException) -> bool:
    return isinstance(map_error(err), Transient)
