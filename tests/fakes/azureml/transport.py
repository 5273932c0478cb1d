"""An azure-core ``HttpTransport`` (a RequestsTransport) answering in-process from the fake.

The real ``MLClient`` (and the real azure-storage-blob client the SDK uploads code with) build
and serialize every request themselves; only the last hop, the socket, is replaced. Each request
is recorded so tests can assert the exact REST bodies the SDK sent.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from urllib3.response import HTTPResponse

if TYPE_CHECKING:
    from tests.fakes.azureml.service import FakeAzureML


class FakeCredential:
    """A TokenCredential that hands out a dummy bearer token and counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken("fake-token", int(time.time()) + 3600)


@dataclass
class Recorded:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class _InProcessAdapter(HTTPAdapter):
    """A requests adapter that answers from the fake instead of opening a socket."""

    def __init__(self, owner: FakeTransport) -> None:
        super().__init__()
        self.owner = owner

    def send(self, request: PreparedRequest, stream: bool = False, **kwargs: Any) -> Response:
        body = _body_bytes(request.body)
        headers = dict(request.headers)
        method = request.method or "GET"
        url = request.url or ""
        self.owner.requests.append(Recorded(method, url, headers, body))
        status, out_headers, out = self.owner.service.handle(method, url, headers, body)
        raw = HTTPResponse(
            body=io.BytesIO(out),
            headers=out_headers,
            status=status,
            reason="OK" if status < 400 else "Error",
            preload_content=False,
            decode_content=False,
            request_method=method,  # a HEAD answer has a Content-Length but no body
        )
        return self.build_response(request, raw)


class FakeTransport(RequestsTransport):
    """azure-core's own RequestsTransport over a session whose adapter is the fake.

    Everything azure-core does with a response (rest and legacy responses, streaming
    downloads, LRO polling) runs unchanged; only the socket is replaced.
    """

    def __init__(self, service: FakeAzureML) -> None:
        self.service = service
        self.requests: list[Recorded] = []
        session = requests.Session()
        adapter = _InProcessAdapter(self)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        super().__init__(session=session, session_owner=False)

    # ---- helpers for assertions ----------------------------------------------------------
    def find(self, method: str, fragment: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and fragment in r.url]


def _body_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    if hasattr(data, "read"):  # streamed uploads (blob blocks)
        chunk = data.read()
        return chunk if isinstance(chunk, bytes) else str(chunk).encode()
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return b"".join(bytes(c) for c in data)  # an iterator of chunks
