"""The one error tree of mlcloud.

Every failure a user can see is an ``MlcloudError``. Providers translate their SDK's exceptions
onto this tree in exactly one module each (``providers/<name>/errors.py``), so callers only ever
catch these classes::

    MlcloudError
    ├── ConfigError            bad mlcloud.yaml / profile settings / environment
    ├── SpecError              bad job.yaml / Deployment values (names field and allowed values)
    ├── UnsupportedFeature     the provider cannot honour a requested feature (raised at plan time)
    ├── ProviderUnavailable    the provider's extra is not installed (carries the pip line)
    ├── NotFoundLocally        an id or name unknown to the local state store
    └── ProviderError          the backend refused or failed (provider, code, retryable)
        ├── AuthError          credentials missing or invalid
        ├── PermissionDenied   authenticated but not allowed
        ├── NotFound           the backend has no such resource
        ├── Conflict           already exists / wrong state for the operation
        ├── QuotaExceeded      a quota or resource limit (``quota`` names it when known)
        ├── Throttled          rate limited; retryable
        └── Transient          timeouts, 5xx, connection resets; retryable
"""

from __future__ import annotations


class MlcloudError(Exception):
    """Root of every error mlcloud raises on purpose. ``hint`` is one line telling what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(MlcloudError):
    """mlcloud.yaml, a profile's settings or an MLCLOUD_* variable is invalid."""


class SpecError(MlcloudError):
    """A TrainingJob / Deployment spec is invalid. The message names each bad field."""


class NotFoundLocally(MlcloudError):
    """A job id or endpoint name that the local state store does not know."""


class UnsupportedFeature(MlcloudError):
    """The provider cannot honour ``feature``: raised by ``plan_*``, never silently dropped."""

    def __init__(self, feature: str, provider: str, hint: str | None = None) -> None:
        super().__init__(f"{provider} does not support {feature}", hint=hint)
        self.feature = feature
        self.provider = provider


class ProviderUnavailable(MlcloudError):
    """The provider's Python dependencies are missing."""

    def __init__(self, provider: str, install: str | None, cause: str = "") -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(
            f"provider {provider!r} is not available{detail}",
            hint=f"install it with: {install}" if install else None,
        )
        self.provider = provider
        self.install = install


class ProviderError(MlcloudError):
    """The backend failed or refused. ``code`` is the backend's own error code when it has one."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        code: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.provider = provider
        self.code = code
        if retryable is not None:
            self.retryable = retryable


class AuthError(ProviderError):
    """Credentials are missing, expired or invalid."""


class PermissionDenied(ProviderError):
    """Authenticated, but not allowed to do this."""


class NotFound(ProviderError):
    """The backend has no such job, endpoint, model or bucket."""


class Conflict(ProviderError):
    """The resource already exists, or is in a state that forbids the operation."""


class QuotaExceeded(ProviderError):
    """A quota or resource limit was hit; ``quota`` names it when the backend says which."""

    def __init__(
        self, message: str, *, provider: str, quota: str | None = None, **kw: object
    ) -> None:
        super().__init__(message, provider=provider, **kw)  # type: ignore[arg-type]
        self.quota = quota


class Throttled(ProviderError):
    """Rate limited by the backend."""

    retryable = True


class Transient(ProviderError):
    """A timeout, 5xx or dropped connection: safe to retry idempotent calls."""

    retryable = True


__all__ = [
    "AuthError",
    "ConfigError",
    "Conflict",
    "MlcloudError",
    "NotFound",
    "NotFoundLocally",
    "PermissionDenied",
    "ProviderError",
    "ProviderUnavailable",
    "QuotaExceeded",
    "SpecError",
    "Throttled",
    "Transient",
    "UnsupportedFeature",
]
