"""One server's HTTP transport: requests, problem documents raised as MlcloudErrors,
server-sent events."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from mlcloud import errors
from mlcloud.client.wire import SELF, SERVER_ENV, error_from_problem

#: the server's warnings about a call, one header each (``mlcloud.server.warnings_relay``)
WARNING_HEADER = "x-mlcloud-warning"


class Transport:
    """The HTTP half of :class:`mlcloud.client.Client` (the feature calls build on it)."""

    def __init__(
        self, url: str, token: str | None = None, *, timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        headers = {"user-agent": "mlcloud-client"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout, connect=10.0),
        )  # fmt: skip

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    def close(self) -> None:
        self.http.close()

    # ---- transport ---------------------------------------------------------------------------
    def _unreachable(self, exc: httpx.TransportError) -> errors.Transient:
        return errors.Transient(
            f"the mlcloud server at {self.url} does not answer ({type(exc).__name__}: {exc})",
            provider_type=SELF, code="Unreachable",
            hint=f"is it running? check {SERVER_ENV}, or unset it to work locally",
        )  # fmt: skip

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            body = json.loads(response.read() or b"{}")
        except ValueError:
            body = {}
        if not isinstance(body, dict) or "kind" not in body:
            body = {"kind": "ProviderError", "kinds": ["ProviderError"],
                    "detail": f"the server answered HTTP {response.status_code}: "
                    f"{response.text[:200]}"}  # fmt: skip
        raise error_from_problem(body, response.status_code)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; the answer's JSON, or the problem's MlcloudError raised."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        self._raise_for(response)
        _warn_again(response)
        return response.json() if response.content else None

    def events(self, path: str, params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
        """Server-sent events of ``path`` as (event, data) pairs (``message`` by default)."""
        try:
            with self.http.stream("GET", path, params=params, timeout=httpx.Timeout(
                None, connect=10.0)) as response:  # fmt: skip
                self._raise_for(response)
                event, data = "message", list[str]()
                for line in response.iter_lines():
                    if not line:
                        if data:
                            yield event, "\n".join(data)
                        event, data = "message", []
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif line.startswith("event:"):
                        event = line[6:].strip()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None


def _warn_again(response: httpx.Response) -> None:
    """The server's warnings about this call, warned here as they would be locally (the CLI
    prints each as a ``warning:`` line)."""
    for raw in response.headers.get_list(WARNING_HEADER):
        try:
            text = str(json.loads(raw))
        except ValueError:
            text = raw
        warnings.warn(errors.MlcloudWarning(text), stacklevel=4)
