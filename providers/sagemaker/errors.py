"""botocore exceptions → the mlcloud error tree: the one mapping of this provider.

botocore's "standard" retry mode has already retried throttling, 5xx and dropped connections by
the time an exception reaches us, so nothing here retries: it only classifies. An exception that
is not botocore's (a bug, a KeyboardInterrupt) is not this module's business: ``translate``
answers ``None`` and ``mlcloud.errors.map_exceptions`` re-raises it untouched.

Provider code that must branch on an outcome (``NotFound``: absent; ``Conflict``: already exists)
wraps the SDK call in ``with provider.mapped():`` and catches the mlcloud class.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mlcloud.errors import (
    AuthError,
    ConfigError,
    Conflict,
    MlcloudError,
    NotFound,
    Origin,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    Throttled,
    Transient,
)

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

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
_VALIDATION = {"ValidationException", "ValidationError"}
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


def translate(exc: Exception, origin: Origin) -> MlcloudError | None:
    """A botocore exception → the matching mlcloud error; anything else → ``None``."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        return _client_error(exc, origin)
    name = type(exc).__name__
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return origin.error(
            AuthError, f"no usable AWS credentials ({name})", code=name, hint=_HINTS[AuthError]
        )
    if isinstance(exc, _token_errors(bx)):
        return origin.error(
            AuthError, f"AWS login expired ({name})", code=name, hint="run: aws sso login"
        )
    if isinstance(exc, (bx.ProfileNotFound, bx.NoRegionError, bx.InvalidConfigError)):
        return ConfigError(str(exc), hint="check the AWS profile/region in the sagemaker profile")
    if isinstance(exc, _unreachable(bx)):
        return origin.error(
            Transient, f"cannot reach AWS: {exc}", code=name, hint=_HINTS[Transient]
        )
    if isinstance(exc, bx.ParamValidationError):
        return origin.error(ProviderError, f"invalid AWS request: {exc}", code="ParamValidation")
    return None


def _token_errors(bx: object) -> tuple[type[Exception], ...]:
    names = ("TokenRetrievalError", "SSOTokenLoadError", "UnauthorizedSSOTokenError")
    return tuple(getattr(bx, n) for n in names if hasattr(bx, n))


def _unreachable(bx: object) -> tuple[type[Exception], ...]:
    names = (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "HTTPClientError",
    )
    return tuple(getattr(bx, n) for n in names)


def _client_error(err: ClientError, origin: Origin) -> ProviderError:
    """A ``ClientError`` (the service answered with an error) → a ProviderError subclass."""
    error = err.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or err)
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    text = f"{code}: {message}"
    if code in _THROTTLED:
        return origin.error(Throttled, text, code=code, hint=_HINTS[Throttled])
    if code in _QUOTA:
        found = _QUOTA_NAME.search(message)
        return QuotaExceeded(
            text,
            provider_type=origin.provider_type,
            profile=origin.profile,
            quota=found.group(1) if found else None,
            code=code,
            hint=_HINTS[QuotaExceeded],
        )
    if code in _AUTH:
        return origin.error(AuthError, text, code=code, hint=_HINTS[AuthError])
    if code in _DENIED or status == 403:
        return origin.error(PermissionDenied, text, code=code, hint=_HINTS[PermissionDenied])
    if code in _NOT_FOUND or status == 404:
        return origin.error(NotFound, text, code=code)
    if code in _CONFLICT:
        return origin.error(Conflict, text, code=code)
    if code in _VALIDATION:
        if _VALIDATION_NOT_FOUND.search(message):
            return origin.error(NotFound, text, code=code)
        if _VALIDATION_CONFLICT.search(message):
            return origin.error(Conflict, text, code=code)
        return origin.error(ProviderError, text, code=code)
    if code in _TRANSIENT or status >= 500:
        return origin.error(Transient, text, code=code, hint=_HINTS[Transient])
    return origin.error(ProviderError, text, code=code)
