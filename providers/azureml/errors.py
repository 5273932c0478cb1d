"""azure-core / azure-ai-ml exceptions → the mlcloud error tree: the provider's one mapping.

azure-core's RetryPolicy already retries throttling, 5xx and connection errors (up to 10
times with back-off), so an error that reaches here has been retried: nothing above re-tries
the same call. ``retryable`` is still set so a caller's own waiting loop can decide.

Only the SDK's own exceptions are translated; anything else (a bug of ours) gives ``None`` and
is re-raised untouched by ``mlcloud.errors.map_exceptions``.
"""

from __future__ import annotations

import re
import sys

from mlcloud.errors import (
    AuthError,
    Conflict,
    MlcloudError,
    NotFound,
    Origin,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    SpecError,
    Throttled,
    Transient,
)

_QUOTA = re.compile(r"quota|QuotaExceeded|OperationNotAllowed.*(cores|limit)", re.I)
_SECRET = re.compile(r"(sig|key|token|secret|password)=([^&\s\"']+)", re.I)
_SDK_EXCEPTIONS = "azure.ai.ml.exceptions"


def _clean(text: str) -> str:
    """First line of the service message, SAS signatures and keys blanked."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), text).strip()
    return _SECRET.sub(r"\1=***", line)[:500]


def translate(exc: Exception, origin: Origin) -> MlcloudError | None:
    """The mlcloud error for an azure-core or azure-ai-ml exception; ``None`` for any other."""
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ServiceRequestError,
        ServiceResponseError,
    )

    message = _clean(str(exc))
    if isinstance(exc, ClientAuthenticationError):
        return origin.error(
            AuthError,
            f"Azure authentication failed: {message}",
            code="ClientAuthenticationError",
            hint="sign in with `az login`, or set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
            "AZURE_CLIENT_SECRET (DefaultAzureCredential)",
        )
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return origin.error(Transient, f"Azure ML unreachable: {message}")
    if isinstance(exc, HttpResponseError):
        return _http(exc, message, origin)
    if isinstance(exc, AzureError):
        return origin.error(ProviderError, f"Azure ML: {type(exc).__name__}: {message}")
    return _sdk_error(exc, message, origin)


def _http(exc: Exception, message: str, origin: Origin) -> MlcloudError:
    """An HTTP answer of the service, by status (and the ARM error code for quotas)."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    status = getattr(exc, "status_code", None) or 0
    inner = getattr(exc, "error", None)
    raw_code = getattr(inner, "code", None) or getattr(exc, "reason", None)
    code = str(raw_code) if raw_code else None
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return origin.error(NotFound, f"Azure ML: not found: {message}", code=code)
    if isinstance(exc, ResourceExistsError) or status == 409:
        return origin.error(Conflict, f"Azure ML: conflict: {message}", code=code)
    if status == 401:
        return origin.error(
            AuthError,
            f"Azure ML rejected the credentials: {message}",
            code=code,
            hint="sign in again (`az login`) or check the service principal",
        )
    if status == 403:
        return origin.error(
            PermissionDenied,
            f"Azure ML: permission denied: {message}",
            code=code,
            hint="the identity needs the AzureML Data Scientist role on the workspace",
        )
    if status == 429:
        return origin.error(Throttled, f"Azure ML: throttled: {message}", code=code)
    if _QUOTA.search(f"{code} {message}"):
        return QuotaExceeded(
            f"Azure ML: quota exceeded: {message}",
            provider_type=origin.provider_type,
            profile=origin.profile,
            quota=code,
            code=code,
            hint="request more quota for the VM family, or pick a smaller instance type",
        )
    if status >= 500:
        return origin.error(Transient, f"Azure ML: service error {status}: {message}", code=code)
    if status == 400:
        return origin.error(ProviderError, f"Azure ML rejected the request: {message}", code=code)
    return origin.error(ProviderError, f"Azure ML: HTTP {status}: {message}", code=code)


def _sdk_error(exc: Exception, message: str, origin: Origin) -> MlcloudError | None:
    """azure-ai-ml's own exceptions (validation, asset upload) wrap the HTTP error or not.

    Only looked at when azure-ai-ml is loaded: an exception cannot be one of its classes
    otherwise, and importing it for a bug of ours would cost a second.
    """
    if _SDK_EXCEPTIONS not in sys.modules:
        return None
    from azure.ai.ml.exceptions import MlException, ValidationException

    if not isinstance(exc, MlException):
        return None
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, Exception) and not isinstance(cause, MlException):
        wrapped = translate(cause, origin)
        if wrapped is not None:
            return wrapped
    if isinstance(exc, ValidationException):
        return SpecError(f"Azure ML validation: {message}")
    return origin.error(ProviderError, f"Azure ML: {message}")
