"""Ray's exceptions -> the mlcloud tree (``translate``, the provider's one mapping).

The Jobs API client (``ray.job_submission.JobSubmissionClient``) reports an HTTP error as a plain
``RuntimeError("Request failed with status code N: <body>.")``, an unreachable dashboard as the
builtin ``ConnectionError``, and a refused token as ``ray.exceptions.AuthenticationError``;
``requests`` and ``aiohttp`` (log tailing) raise their own. Only those are mapped: any other
exception raised inside a provider call is a bug of ours and keeps its traceback.
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
    Throttled,
    Transient,
)

_SDK_PACKAGES = frozenset({"ray", "requests", "urllib3", "aiohttp"})
# JobSubmissionClient._raise_error; the body may span lines
_HTTP = re.compile(r"Request failed with status code (\d{3}): (.*?)\.?\s*$", re.S)
_AUTH_HINT = (
    "set token_file: (or token:) in the profile to the cluster's token "
    "(on the head: ray get-auth-token)"
)


def translate(exc: Exception, origin: Origin) -> MlcloudError | None:
    """The mlcloud error for ``exc``, or ``None`` when it is not something Ray raises."""
    if isinstance(exc, RuntimeError) and type(exc) is RuntimeError:
        match = _HTTP.search(str(exc))
        return _http(int(match.group(1)), match.group(2), origin) if match else None
    if type(exc) is ConnectionError:  # the SDK's "Failed to connect to Ray at address: ..."
        return origin.error(
            Transient,
            f"{origin}: {exc}",
            code="Unreachable",
            hint="is the cluster up? check the profile's address",
        )
    if type(exc).__module__.partition(".")[0] not in _SDK_PACKAGES:
        return None
    return _sdk(exc, origin)


def _sdk(exc: Exception, origin: Origin) -> MlcloudError | None:
    auth = sys.modules.get("ray.exceptions")
    if auth is not None and isinstance(exc, auth.AuthenticationError):
        return origin.error(AuthError, f"{origin}: {_first_line(exc)}", hint=_AUTH_HINT)
    requests = sys.modules.get("requests")
    if requests is not None and isinstance(exc, requests.HTTPError):
        response = exc.response
        if response is not None:
            return _http(response.status_code, response.text, origin)
    if requests is not None and isinstance(exc, requests.RequestException):
        return origin.error(Transient, f"{origin}: {type(exc).__name__}: {exc}")
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return origin.error(Transient, f"{origin}: {type(exc).__name__}: {exc}")
    return None


def _http(status: int, body: str, origin: Origin) -> ProviderError:
    message = f"{origin}: {body.strip() or f'HTTP {status}'}"
    code = f"HTTP{status}"
    if status == 401:
        return origin.error(AuthError, message, code=code, hint=_AUTH_HINT)
    if status == 403:
        return origin.error(
            PermissionDenied if "token" not in body.lower() else AuthError,
            message,
            code=code,
            hint=_AUTH_HINT,
        )
    if status == 404:
        return origin.error(NotFound, message, code=code)
    if status == 409 or (status == 400 and "already exists" in body):
        return origin.error(Conflict, message, code=code)
    if status == 429:
        return origin.error(Throttled, message, code=code)
    if status >= 500:
        return origin.error(Transient, message, code=code)
    return origin.error(ProviderError, message, code=code, hint="the Ray Jobs API refused it")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
