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
    ├── ModelError             a model directory is missing, tampered with or unloadable
    ├── ShadowedPackage        a user package hides mlcloud's own ``providers`` / ``serving``
    └── ProviderError          the backend refused or failed (provider_type, profile, code,
        │                      retryable)
        ├── AuthError          credentials missing or invalid
        ├── PermissionDenied   authenticated but not allowed
        ├── NotFound           the backend has no such resource
        ├── Conflict           already exists / wrong state for the operation
        ├── QuotaExceeded      a quota or resource limit (``quota`` names it when known)
        ├── Throttled          rate limited; retryable
        └── Transient          timeouts, 5xx, connection resets; retryable
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar


class MlcloudWarning(UserWarning):
    """Something the user should know that did not stop the operation; the CLI prints it as
    one ``warning:`` line on stderr."""


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


class ModelError(MlcloudError):
    """A model directory is not an mlcloud model dir, fails its manifest, or cannot load."""


class ShadowedPackage(MlcloudError):
    """An import name of mlcloud (``providers``, ``serving``) resolves outside mlcloud."""


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


@dataclass(frozen=True)
class Origin:
    """Which provider an error came from: its type and, when known, the profile's name."""

    provider_type: str
    profile: str | None = None

    def __str__(self) -> str:
        if self.profile is None or self.profile == self.provider_type:
            return self.provider_type
        return f"{self.provider_type} (profile {self.profile!r})"

    def error(
        self,
        cls: type[ProviderErrorT],
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> ProviderErrorT:
        """``cls(message, ...)`` from this origin: how each provider's mapping builds errors."""
        return cls(
            message,
            provider_type=self.provider_type,
            profile=self.profile,
            code=code,
            hint=hint,
            retryable=retryable,
        )


class ProviderError(MlcloudError):
    """The backend failed or refused.

    ``provider_type`` is the provider type (``"sagemaker"``), ``profile`` the profile's name when
    known, ``code`` the backend's own error code when it has one, ``retryable`` whether repeating
    the same idempotent call may succeed.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider_type: str,
        profile: str | None = None,
        code: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.provider_type = provider_type
        self.profile = profile
        self.code = code
        if retryable is not None:
            self.retryable = retryable

    @property
    def origin(self) -> Origin:
        return Origin(self.provider_type, self.profile)


ProviderErrorT = TypeVar("ProviderErrorT", bound=ProviderError)


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
        self,
        message: str,
        *,
        provider_type: str,
        profile: str | None = None,
        quota: str | None = None,
        code: str | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            provider_type=provider_type,
            profile=profile,
            code=code,
            hint=hint,
            retryable=retryable,
        )
        self.quota = quota


class Throttled(ProviderError):
    """Rate limited by the backend."""

    retryable = True


class Transient(ProviderError):
    """A timeout, 5xx or dropped connection: safe to retry idempotent calls."""

    retryable = True


if TYPE_CHECKING:  # this module is vendored into jobs and must import on Python 3.8
    #: A provider's one error mapping: an SDK exception -> the mlcloud error, or None.
    Translate = Callable[[Exception, Origin], MlcloudError | None]


@contextmanager
def map_exceptions(translate: Translate, origin: Origin) -> Iterator[None]:
    """Translate exceptions raised in the block (httpx's ``map_exceptions``, with a function
    because SDK errors are told apart by their codes, not only their classes).

    mlcloud's own errors pass through; an exception ``translate`` does not know (a bug, a
    KeyboardInterrupt) is re-raised untouched, never dressed up as a provider failure.
    """
    try:
        yield
    except MlcloudError:
        raise
    except Exception as exc:
        mapped = translate(exc, origin)
        if mapped is None:
            raise
        raise mapped from exc


__all__ = [
    "AuthError",
    "ConfigError",
    "Conflict",
    "MlcloudError",
    "ModelError",
    "NotFound",
    "NotFoundLocally",
    "Origin",
    "PermissionDenied",
    "ProviderError",
    "ProviderUnavailable",
    "QuotaExceeded",
    "ShadowedPackage",
    "SpecError",
    "Throttled",
    "Transient",
    "UnsupportedFeature",
    "map_exceptions",
]
