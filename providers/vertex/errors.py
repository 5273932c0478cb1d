"""Google API errors -> the mlcloud tree (``translate``, the provider's one mapping), and the one
retry policy for idempotent calls, which tells transient errors apart by the same codes.

GAPIC methods have no default retry, so idempotent reads (get/list) and cancel pass
:func:`read_retry` explicitly; creates never do (a lost response must not create a second job:
``jobs.submit`` looks the job up by label instead).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mlcloud.errors import (
    AuthError,
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
    from google.api_core.exceptions import GoogleAPICallError
    from google.api_core.retry import Retry

# Where the exceptions of the Google SDKs (and the HTTP stack under their REST transport) live;
# anything else raised inside a provider call is a bug of ours and keeps its traceback.
_SDK_PACKAGES = frozenset({"google", "requests", "urllib3"})
# Google's ErrorInfo reason for per-minute request limits; other RESOURCE_EXHAUSTED are quotas.
_RATE_REASONS = frozenset({"RATE_LIMIT_EXCEEDED", "RATE_LIMITED"})
_CONFLICT_STATUSES = frozenset({"FAILED_PRECONDITION", "ABORTED", "ALREADY_EXISTS"})
_TRANSIENT = ("ServiceUnavailable", "DeadlineExceeded", "InternalServerError", "BadGateway",
              "GatewayTimeout")  # fmt: skip
# REST errors read "POST http://host/v1/<resource>?$alt=...: <message>"
_REST_MESSAGE = re.compile(r"(GET|POST|PUT|PATCH|DELETE) \S+?/v\d\w*/([^?\s]+)\S*: (.*)", re.S)

READ_RETRY_TIMEOUT = 30.0  # seconds, over all attempts of one idempotent call


def read_retry() -> Retry:
    """Bounded retry for idempotent calls: transient failures only, READ_RETRY_TIMEOUT in all."""
    from google.api_core import exceptions as gexc
    from google.api_core import retry

    transient = tuple(getattr(gexc, name) for name in _TRANSIENT)

    def predicate(exc: Exception) -> bool:
        if isinstance(exc, transient):
            return True
        return isinstance(exc, gexc.TooManyRequests) and _error_reason(exc) in _RATE_REASONS

    return retry.Retry(
        predicate=predicate, initial=0.2, maximum=5.0, multiplier=2.0, timeout=READ_RETRY_TIMEOUT
    )


def translate(exc: Exception, origin: Origin) -> MlcloudError | None:
    """One SDK exception (google.api_core, google.auth, requests) -> the mlcloud error; ``None``
    for anything else, which ``map_exceptions`` then re-raises untouched."""
    if type(exc).__module__.partition(".")[0] not in _SDK_PACKAGES:
        return None
    import requests
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(exc, gexc.RetryError) and isinstance(exc.cause, Exception):
        return translate(exc.cause, origin)
    if isinstance(exc, gexc.GoogleAPICallError):
        return _translate_call(exc, origin)
    if isinstance(exc, auth_exc.GoogleAuthError):
        return origin.error(
            AuthError,
            f"{origin}: no usable Google credentials ({exc})",
            hint="run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS",
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return origin.error(Transient, f"{origin}: {type(exc).__name__}: {exc}")
    if isinstance(exc, gexc.GoogleAPIError):
        return origin.error(ProviderError, f"{origin}: {exc}")
    return origin.error(ProviderError, f"{origin}: {type(exc).__name__}: {exc}")


def _translate_call(exc: GoogleAPICallError, origin: Origin) -> ProviderError:
    from google.api_core import exceptions as gexc

    status = _rpc_status(exc)
    code = status or (str(exc.code) if exc.code else None)
    message = _message(exc, origin)
    if status in _CONFLICT_STATUSES:  # over REST these arrive as a plain 400/409
        return origin.error(Conflict, message, code=code)
    if isinstance(exc, gexc.Unauthenticated | gexc.Unauthorized):
        return origin.error(
            AuthError, message, code=code, hint="refresh credentials: gcloud auth login"
        )
    if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden):
        hint = "grant the caller roles/aiplatform.user on the project"
        return origin.error(PermissionDenied, message, code=code, hint=hint)
    if isinstance(exc, gexc.NotFound):
        return origin.error(NotFound, message, code=code)
    if isinstance(exc, gexc.AlreadyExists | gexc.Conflict | gexc.FailedPrecondition | gexc.Aborted):
        return origin.error(Conflict, message, code=code)
    if isinstance(exc, gexc.TooManyRequests):  # ResourceExhausted is a subclass
        return _resource_exhausted(exc, origin, message, code)
    if isinstance(exc, tuple(getattr(gexc, name) for name in _TRANSIENT)):
        return origin.error(Transient, message, code=code)
    if isinstance(exc, gexc.InvalidArgument | gexc.BadRequest):
        hint = "Vertex AI rejected the request"
        return origin.error(ProviderError, message, code=code, hint=hint)
    return origin.error(ProviderError, message, code=code)


def _resource_exhausted(
    exc: GoogleAPICallError, origin: Origin, message: str, code: str | None
) -> ProviderError:
    """A per-minute rate limit (Throttled, retryable) or a quota (QuotaExceeded, naming it)."""
    if _error_reason(exc) in _RATE_REASONS:
        return origin.error(
            Throttled, message, code=code, hint="retry later or lower the request rate"
        )
    quota = _quota_name(exc)
    return QuotaExceeded(
        message,
        provider_type=origin.provider_type,
        profile=origin.profile,
        quota=quota,
        code=code,
        hint="request more quota in the Cloud console (IAM & Admin > Quotas)"
        + (f" for {quota}" if quota else ""),
    )


def _message(exc: GoogleAPICallError, origin: Origin) -> str:
    """Google's message, naming the call but not the host: ``vertex: <message> (GET <name>)``."""
    text = str(exc.message)
    rest = _REST_MESSAGE.fullmatch(text)
    if rest is None:
        return f"{origin}: {text}"
    method, resource, message = rest.groups()
    return f"{origin}: {message} ({method} {resource})"


def _error_reason(exc: object) -> str | None:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else None


def _quota_name(exc: GoogleAPICallError) -> str | None:
    metadata = getattr(exc, "metadata", None) or {}
    for key in ("quota_metric", "quota_limit", "quota_id"):
        if metadata.get(key):
            return str(metadata[key])
    # google.rpc.QuotaFailure: a dict over REST, a message over gRPC
    for detail in exc.details or ():
        violations = (
            detail.get("violations")
            if isinstance(detail, Mapping)
            else getattr(detail, "violations", None)
        )
        for violation in violations or ():
            subject = (
                violation.get("subject")
                if isinstance(violation, Mapping)
                else getattr(violation, "subject", None)
            )
            if subject:
                return str(subject)
    return None


def _rpc_status(exc: GoogleAPICallError) -> str | None:
    """The google.rpc.Code name: gRPC carries it; over REST it is the body's error.status."""
    name = getattr(exc.grpc_status_code, "name", None)
    if name:
        return str(name)
    read_json = getattr(exc.response, "json", None)
    if read_json is None:
        return None
    try:
        body = read_json()
    except (ValueError, TypeError):
        return None
    error = body.get("error") if isinstance(body, Mapping) else None
    status = error.get("status") if isinstance(error, Mapping) else None
    return str(status) if status else None
