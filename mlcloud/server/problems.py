"""MlcloudError → RFC 9457 problem details, with the error's kind and hint.

The HTTP status follows the CLI's exit-code rule (``mlcloud.cli.core.exit_code``): the caller's
input is wrong (a spec, a setting, an unknown id, a feature the provider cannot honour) → 4xx;
something failed (the backend, a model, the store) → 5xx. A backend's refusal keeps its meaning:
Conflict → 409, Throttled/QuotaExceeded → 429/503. ``kinds`` lists the error's classes up to
MlcloudError, so a client that does not know a subclass rebuilds the nearest one it knows.
"""

from __future__ import annotations

from typing import Any

from mlcloud import errors

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://mlcloud.dev/problems/"

#: the first class of an error's MRO found here gives its status
_STATUS: tuple[tuple[type[errors.MlcloudError], int], ...] = (
    (errors.NotFoundLocally, 404),
    (errors.SpecError, 422),
    (errors.UnsupportedFeature, 422),
    (errors.ConfigError, 400),
    (errors.Conflict, 409),
    (errors.Throttled, 429),
    (errors.QuotaExceeded, 503),
    (errors.Transient, 503),
    (errors.ProviderError, 502),  # the backend refused or failed: a bad gateway, not us
    (errors.MlcloudError, 500),
)
#: attributes carried so the client rebuilds the same error (never secrets: names and codes)
_EXTRAS = ("provider_type", "profile", "code", "retryable", "feature", "provider", "install",
           "quota")  # fmt: skip


def status_for(error: errors.MlcloudError) -> int:
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


def kinds(error: BaseException) -> list[str]:
    """The error's class names, most specific first, up to MlcloudError."""
    names = []
    for cls in type(error).__mro__:
        names.append(cls.__name__)
        if cls is errors.MlcloudError:
            break
    return names


def problem(error: errors.MlcloudError, instance: str | None = None) -> dict[str, Any]:
    """The problem document of ``error`` (``status`` included)."""
    kind = type(error).__name__
    body: dict[str, Any] = {
        "type": TYPE_BASE + kind,
        "title": kind,
        "status": status_for(error),
        "detail": error.message,
        "kind": kind,
        "kinds": kinds(error),
        "hint": error.hint,
    }
    if instance is not None:
        body["instance"] = instance
    for name in _EXTRAS:
        value = getattr(error, name, None)
        if value is not None:
            body[name] = value
    return body


def http_problem(
    status: int, kind: str, detail: str, hint: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A problem the server itself raises (no token, wrong role, too many requests)."""
    return {
        "type": TYPE_BASE + kind,
        "title": kind,
        "status": status,
        "detail": detail,
        "kind": kind,
        "kinds": [kind, "ProviderError", "MlcloudError"]
        if kind in ("AuthError", "PermissionDenied", "Throttled")
        else [kind, "MlcloudError"],
        "hint": hint,
        **extra,
    }
