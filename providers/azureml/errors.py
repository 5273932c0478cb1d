"""azure-core / azure-ai-ml exceptions → the mlcloud error tree, in one place.

azure-core's RetryPolicy already retries throttling, 5xx and connection errors (up to 10
times with back-off), so an error that reaches here has been retried: nothing above re-tries
the same call. ``retryable`` is still set so a caller's own waiting loop can decide.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator

from mlcloud.errors import (
    AuthError,
    Conflict,
    MlcloudError,
    NotFound,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    SpecError,
    Throttled,
    Transient,
)

PROVIDER = "azureml"
_QUOTA = re.compile(r"quota|QuotaExceeded|OperationNotAllowed.*(cores|limit)", re.I)
_SECRET = re.compile(r"(sig|key|token|secret|password)=([^&\s\"']+)", re.I)


def _clean(text: str) -> str:
    """First line of the service message, SAS signatures and keys blanked."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), text).strip()
    return _SECRET.sub(r"\1=***", line)[:500]


def translate(err: Exception) -> MlcloudError:
    """One mlcloud error for ``err`` (any exception the SDK raises)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(err, MlcloudError):
        return err
    message = _clean(str(err))
    if isinstance(err, ClientAuthenticationError):
        return AuthError(
            f"Azure authentication failed: {message}",
            provider=PROVIDER,
            code="ClientAuthenticationError",
            hint="sign in with `az login`, or set AZURE_CLIENT_ID / AZURE_TENANT_ID / "
            "AZURE_CLIENT_SECRET (DefaultAzureCredential)",
        )
    if isinstance(err, (ServiceRequestError, ServiceResponseError)):
        return Transient(f"Azure ML unreachable: {message}", provider=PROVIDER)
    if isinstance(err, HttpResponseError):
        return _http(err, message, ResourceNotFoundError, ResourceExistsError)
    sdk = _sdk_error(err, message)
    if sdk is not None:
        return sdk
    return ProviderError(f"Azure ML: {type(err).__name__}: {message}", provider=PROVIDER)


def _http(err: Exception, message: str, not_found: type, exists: type) -> MlcloudError:
    status = getattr(err, "status_code", None) or 0
    inner = getattr(err, "error", None)
    code = getattr(inner, "code", None) or getattr(err, "reason", None)
    kw = {"provider": PROVIDER, "code": str(code) if code else None}
    if isinstance(err, not_found) or status == 404:
        return NotFound(f"Azure ML: not found: {message}", **kw)  # type: ignore[arg-type]
    if isinstance(err, exists) or status == 409:
        return Conflict(f"Azure ML: conflict: {message}", **kw)  # type: ignore[arg-type]
    if status == 401:
        return AuthError(
            f"Azure ML rejected the credentials: {message}",
            hint="sign in again (`az login`) or check the service principal",
            **kw,  # type: ignore[arg-type]
        )
    if status == 403:
        return PermissionDenied(
            f"Azure ML: permission denied: {message}",
            hint="the identity needs the AzureML Data Scientist role on the workspace",
            **kw,  # type: ignore[arg-type]
        )
    if status == 429:
        return Throttled(f"Azure ML: throttled: {message}", **kw)  # type: ignore[arg-type]
    if _QUOTA.search(f"{code} {message}"):
        return QuotaExceeded(
            f"Azure ML: quota exceeded: {message}",
            quota=str(code) if code else None,
            hint="request more quota for the VM family, or pick a smaller instance type",
            **kw,  # type: ignore[arg-type]
        )
    if status >= 500:
        return Transient(f"Azure ML: service error {status}: {message}", **kw)  # type: ignore[arg-type]
    if status == 400:
        return ProviderError(f"Azure ML rejected the request: {message}", **kw)  # type: ignore[arg-type]
    return ProviderError(f"Azure ML: HTTP {status}: {message}", **kw)  # type: ignore[arg-type]


def _sdk_error(err: Exception, message: str) -> MlcloudError | None:
    """azure-ai-ml's own exceptions (validation, asset upload) wrap the HTTP error or not."""
    from azure.ai.ml.exceptions import MlException, ValidationException

    cause = err.__cause__ or err.__context__
    wrapped = cause if isinstance(cause, Exception) else None
    if isinstance(err, MlException) and wrapped and not isinstance(wrapped, MlException):
        return translate(wrapped)
    if isinstance(err, ValidationException):
        return SpecError(f"Azure ML validation: {message}")
    if isinstance(err, MlException):
        return ProviderError(f"Azure ML: {message}", provider=PROVIDER)
    return None


@contextlib.contextmanager
def mapped() -> Iterator[None]:
    """``with mapped(): ml_client.jobs.get(...)``: mlcloud errors only, SDK chatter on stderr."""
    from azure.ai.ml.exceptions import MlException
    from azure.core.exceptions import AzureError

    # The SDK prints progress (LRO polling dots) to stdout, where `--output json` goes.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except (AzureError, MlException) as err:  # bugs of ours (TypeError, ...) stay visible
        raise translate(err) from err
