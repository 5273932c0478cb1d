"""The one place where Google API errors become mlcloud errors, and the one retry policy.

GAPIC methods have no default retry, so idempotent reads (get/list) and cancel pass
:data:`read_retry` explicitly; creates never do (a lost response must not create a second job —
``jobs.submit_job`` looks the job up by label instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mlcloud import errors as e

PROVIDER = "vertex"
T = TypeVar("T")
# Google's ErrorInfo reason for per-minute request limits; other RESOURCE_EXHAUSTED are quotas.
_RATE_REASONS = frozenset({"RATE_LIMIT_EXCEEDED", "RATE_LIMITED"})
_CONFLICT_STATUSES = frozenset({"FAILED_PRECONDITION", "ABORTED", "ALREADY_EXISTS"})


READ_RETRY_TIMEOUT = 30.0  # seconds, over all attempts of one idempotent call


def read_retry() -> Any:
    """Bounded retry for idempotent calls: transient failures only, READ_RETRY_TIMEOUT in all."""
    from google.api_core import exceptions as gexc
    from google.api_core import retry

    transient = (
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.GatewayTimeout,
    )

    def predicate(exc: Exception) -> bool:
        if isinstance(exc, transient):
            return True
        return isinstance(exc, gexc.TooManyRequests) and _error_reason(exc) in _RATE_REASONS

    return retry.Retry(
        predicate=predicate, initial=0.2, maximum=5.0, multiplier=2.0, timeout=READ_RETRY_TIMEOUT
    )


def _error_reason(exc: Any) -> str | None:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else None


def _quota_name(exc: Any) -> str | None:
    metadata = getattr(exc, "metadata", None) or {}
    for key in ("quota_metric", "quota_limit", "quota_id"):
        if metadata.get(key):
            return str(metadata[key])
    # google.rpc.QuotaFailure: a dict over REST, a message over gRPC
    for detail in getattr(exc, "details", None) or ():
        violations = (
            detail.get("violations")
            if isinstance(detail, dict)
            else getattr(detail, "violations", None)
        )
        for violation in violations or ():
            subject = violation.get("subject") if isinstance(violation, dict) else violation.subject
            if subject:
                return str(subject)
    return None


def _rpc_status(exc: Any) -> str | None:
    """The google.rpc.Code name: gRPC carries it; over REST it is the body's error.status."""
    name = getattr(exc.grpc_status_code, "name", None)
    if name:
        return str(name)
    response = getattr(exc, "response", None)
    try:
        status = response.json().get("error", {}).get("status")  # type: ignore[union-attr]
    except (AttributeError, ValueError, TypeError):
        return None
    return str(status) if status else None


def translate(exc: BaseException, what: str) -> e.MlcloudError:
    """Map one SDK exception (google.api_core, google.auth, requests) onto the mlcloud tree."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.RetryError) and exc.cause is not None:
        return translate(exc.cause, what)
    if isinstance(exc, gexc.GoogleAPICallError):
        return _translate_call(exc, what, gexc)
    try:
        from google.auth import exceptions as auth_exc
    except ImportError:  # pragma: no cover - google-auth comes with api_core
        auth_exc = None  # type: ignore[assignment]
    if auth_exc is not None and isinstance(exc, auth_exc.GoogleAuthError):
        return e.AuthError(
            f"{what}: no usable Google credentials ({exc})",
            provider=PROVIDER,
            hint="run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS",
        )
    import requests

    if isinstance(exc, requests.exceptions.RequestException):
        return e.Transient(f"{what}: {type(exc).__name__}: {exc}", provider=PROVIDER)
    if isinstance(exc, gexc.GoogleAPIError):
        return e.ProviderError(f"{what}: {exc}", provider=PROVIDER)
    return e.ProviderError(f"{what}: {type(exc).__name__}: {exc}", provider=PROVIDER)


def _translate_call(exc: Any, what: str, gexc: Any) -> e.ProviderError:
    status = _rpc_status(exc)
    code = status or (str(exc.code) if exc.code else None)
    # REST errors read "POST http://host/v1/...?$alt=...: message": keep the message
    message = f"{what}: {str(exc.message).rpartition(': ')[2] or exc.message}"
    kw: dict[str, Any] = {"provider": PROVIDER, "code": code}
    if status in _CONFLICT_STATUSES:  # over REST these arrive as a plain 400/409
        return e.Conflict(message, **kw)
    if isinstance(exc, gexc.Unauthenticated | gexc.Unauthorized):
        return e.AuthError(message, hint="refresh credentials: gcloud auth login", **kw)
    if isinstance(exc, gexc.PermissionDenied | gexc.Forbidden):
        return e.PermissionDenied(
            message, hint="grant the caller roles/aiplatform.user on the project", **kw
        )
    if isinstance(exc, gexc.NotFound):
        return e.NotFound(message, **kw)
    if isinstance(exc, gexc.AlreadyExists | gexc.Conflict | gexc.FailedPrecondition | gexc.Aborted):
        return e.Conflict(message, **kw)
    if isinstance(exc, gexc.TooManyRequests):  # ResourceExhausted is a subclass
        if _error_reason(exc) in _RATE_REASONS:
            return e.Throttled(message, hint="retry later or lower the request rate", **kw)
        quota = _quota_name(exc)
        return e.QuotaExceeded(
            message,
            quota=quota,
            hint="request more quota in the Cloud console (IAM & Admin > Quotas)"
            + (f" for {quota}" if quota else ""),
            **kw,
        )
    transient = (
        gexc.ServiceUnavailable,
        gexc.DeadlineExceeded,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.GatewayTimeout,
    )
    if isinstance(exc, transient):
        return e.Transient(message, **kw)
    if isinstance(exc, gexc.InvalidArgument | gexc.BadRequest):
        return e.ProviderError(message, hint="Vertex AI rejected the request", **kw)
    return e.ProviderError(message, **kw)


@contextmanager
def mapped(what: str) -> Iterator[None]:
    """Re-raise any SDK error inside the block as the matching mlcloud error."""
    try:
        yield
    except e.MlcloudError:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("google", "requests", "urllib3"):
            raise  # a bug of ours, not an SDK error: keep its traceback
        raise translate(exc, what) from exc


def call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with mapped(what):
        return fn(*args, **kwargs)
