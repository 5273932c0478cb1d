"""What the local provider can raise → the mlcloud error tree: the one mapping of this provider.

Local has no SDK. What fails here is the machine: the operating system refusing to start or
signal a process, a missing executable or working directory, a full disk (``OSError``); a process
that cannot be started or will not stop (:class:`LocalProcessError`, raised by the supervisor and
the process helpers, which know no profile); the answer of an endpoint's front (an HTTP status,
:func:`http_error`). Anything else (a bug) is not this module's business: ``translate`` answers
``None`` and ``mlcloud.errors.map_exceptions`` re-raises it untouched.
"""

from __future__ import annotations

import errno
import sys

from mlcloud.errors import (
    AuthError,
    MlcloudError,
    NotFound,
    Origin,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    Transient,
)


class LocalProcessError(RuntimeError):
    """A process of a local job or endpoint could not be started, or would not stop.

    Raised where no provider is at hand (the job supervisor, the process helpers); the provider's
    calls turn it into a ``ProviderError`` through :func:`translate`. ``code`` names the case.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


_TRANSIENT_ERRNOS = frozenset({errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def translate(exc: Exception, origin: Origin) -> MlcloudError | None:
    """The mlcloud error for ``exc``, or ``None`` when it is not something local can raise."""
    if isinstance(exc, LocalProcessError):
        return origin.error(ProviderError, str(exc), code=exc.code)
    if isinstance(exc, OSError):
        return _os_error(exc, origin)
    psutil = sys.modules.get("psutil")  # only imported by code that has used it
    if psutil is not None and isinstance(exc, psutil.AccessDenied):
        return origin.error(
            PermissionDenied,
            f"not allowed to inspect or signal process {exc.pid}: {exc}",
            code="AccessDenied",
            hint="run mlcloud as the user who started the job or endpoint",
        )
    return None


def _os_error(exc: OSError, origin: Origin) -> MlcloudError:
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
    if isinstance(exc, FileNotFoundError):
        return origin.error(
            NotFound,
            f"cannot start or read {what}",
            code=code,
            hint="check the command, the profile's python: setting and that the path exists",
        )
    if isinstance(exc, PermissionError):
        return origin.error(PermissionDenied, what, code=code)
    if isinstance(exc, ConnectionError | TimeoutError) or exc.errno in _TRANSIENT_ERRNOS:
        return origin.error(Transient, what, code=code)
    if exc.errno in _FULL_ERRNOS:
        return origin.error(
            QuotaExceeded, what, code=code, hint="free some disk space under $MLCLOUD_HOME"
        )
    return origin.error(ProviderError, what, code=code)


def http_error(origin: Origin, name: str, status: int, message: str) -> ProviderError:
    """The error for an endpoint's non-200 answer: the caller's fault unless the server's."""
    text = f"endpoint {name!r} answered {status}: {message}"
    if status in (401, 403):
        from providers.local.endpoint_net import TOKEN_ENV

        hint = f"set {TOKEN_ENV} to the endpoint's token"
        return origin.error(AuthError, text, code=str(status), hint=hint)
    if status == 404:
        return origin.error(NotFound, text, code="404")
    if status >= 500:
        return origin.error(Transient, text, code=str(status))
    return origin.error(ProviderError, text, code=str(status))
