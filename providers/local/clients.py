"""What the local provider talks to, built on first use.

Local has no SDK: its jobs and servers are processes it starts itself (``supervisor.py``,
``endpoint_procs.py``). The one client it has is HTTP to this machine: the endpoints' fronts
(predictions, the front's control path) and the BentoML servers behind them (``/readyz``). It is
plain ``urllib`` with proxies disabled (these calls never leave the machine, and a user's
``http_proxy`` must not see them), which keeps the CLI free of an HTTP library.

The test seam: a test gives ``HttpClient`` its own ``opener``, or sets ``provider.clients``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass, field


class HttpClient:
    """Plain HTTP calls to this machine; ``request`` returns ``(status, body)``."""

    def __init__(self, opener: urllib.request.OpenerDirector | None = None) -> None:
        self.opener = opener or urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        """One call; an HTTP error status is an answer, not an exception. Raises ``OSError``
        when nothing answered (refused, reset, timed out)."""
        if not target.startswith("http://"):
            raise ValueError(f"only plain http to this machine is used here, got {target!r}")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(target, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with self.opener.open(req, timeout=timeout) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, err.read()


@dataclass(frozen=True)
class LocalClients:
    """The clients of one ``LocalProvider`` (``provider.clients``)."""

    http: HttpClient = field(default_factory=HttpClient)
