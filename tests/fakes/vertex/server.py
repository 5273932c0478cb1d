"""HTTP plumbing of the fake: routing, error bodies, and the Cloud Storage JSON API routes.

Every request body is parsed into the real proto type with ``ignore_unknown_fields=False``, so a
field the SDK or mlcloud gets wrong is a 400 exactly like Google's front end would answer.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.protobuf import json_format
from google.protobuf.message import Message

STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ApiError(Exception):
    """Answered as Google's JSON error body: {"error": {"code", "message", "status", ...}}."""

    def __init__(self, status: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": STATUS_CODES[self.status],
            "message": self.message,
            "status": self.status,
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}


def parse(message_cls: Any, body: bytes) -> Message:
    """Parse proto-JSON strictly into a raw protobuf message of proto-plus class ``message_cls``."""
    msg = message_cls.pb()()
    try:
        json_format.Parse(body or b"{}", msg, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise ApiError("INVALID_ARGUMENT", f"Invalid JSON payload received. {err}") from None
    return msg


def to_json(msg: Message) -> dict[str, Any]:
    return json.loads(json_format.MessageToJson(msg))


@dataclass
class Request:
    method: str
    path: str  # unquoted, without the /v1 or /ui prefix for Vertex routes
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]


@dataclass
class Response:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"


@dataclass
class Injected:
    """A scripted failure: answer ``error`` to the next ``times`` requests matching ``pattern``.

    With ``after_handling`` the request is processed first (the response is "lost").
    """

    method: str
    pattern: re.Pattern[str]
    error: ApiError
    times: int = 1
    after_handling: bool = False
    then: Callable[[], None] | None = None  # a side effect when it fires (e.g. a job ends)


@dataclass
class Blob:
    data: bytes
    generation: int
    content_type: str
    updated: float = field(default_factory=time.time)


class Storage:
    """The slice of the GCS JSON API that google-cloud-storage uses to stage files."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], Blob] = {}
        self.uploaded_bytes = 0
        self.uploads = 0
        self._generation = 0

    def meta(self, bucket: str, name: str, blob: Blob) -> dict[str, Any]:
        return {
            "kind": "storage#object",
            "bucket": bucket,
            "name": name,
            "id": f"{bucket}/{name}/{blob.generation}",
            "generation": str(blob.generation),
            "metageneration": "1",
            "size": str(len(blob.data)),
            "contentType": blob.content_type,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(blob.updated)),
        }

    def handle(self, req: Request) -> Response | None:
        m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", req.path)
        if m and req.method == "GET":
            blob = self.blobs.get((m[1], m[2]))
            if blob is None:
                raise ApiError("NOT_FOUND", f"No such object: {m[1]}/{m[2]}")
            return _json(self.meta(m[1], m[2], blob))
        m = re.fullmatch(r"/download/storage/v1/b/([^/]+)/o/(.+)", req.path)
        if m and req.method == "GET":
            blob = self.blobs.get((m[1], m[2]))
            if blob is None:
                raise ApiError("NOT_FOUND", f"No such object: {m[1]}/{m[2]}")
            return Response(body=blob.data, content_type=blob.content_type)
        m = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", req.path)
        if m and req.method == "POST":
            if req.query.get("uploadType") != "multipart":
                raise ApiError("UNIMPLEMENTED", "the fake supports multipart uploads only")
            metadata, data, ctype = _multipart(req)
            name = metadata.get("name") or req.query.get("name", "")
            key = (m[1], name)
            if req.query.get("ifGenerationMatch") == "0" and key in self.blobs:
                return Response(
                    status=412,
                    body=json.dumps(
                        {"error": {"code": 412, "message": "At least one of the pre-conditions "
                                   "you specified did not hold.", "status": "FAILED_PRECONDITION"}}
                    ).encode(),
                )  # fmt: skip
            self._generation += 1
            self.blobs[key] = Blob(data, self._generation, metadata.get("contentType") or ctype)
            self.uploaded_bytes += len(data)
            self.uploads += 1
            return _json(self.meta(m[1], name, self.blobs[key]))
        return None


def _multipart(req: Request) -> tuple[dict[str, Any], bytes, str]:
    header = f"Content-Type: {req.headers.get('content-type', '')}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + req.body)
    parts = list(msg.iter_parts())
    if len(parts) != 2:
        raise ApiError("INVALID_ARGUMENT", "multipart upload needs metadata and media parts")
    metadata = json.loads(parts[0].get_payload(decode=True) or b"{}")
    data = parts[1].get_payload(decode=True) or b""
    return metadata, data, parts[1].get_content_type()


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(data).encode())


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 dispatching to ``handlers`` in order."""

    def __init__(self, handlers: list[Any]) -> None:
        self.handlers = handlers
        self.injected: list[Injected] = []
        self.lock = threading.RLock()
        self.log: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                query = {k: v[-1] for k, v in parse_qs(split.query).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                req = Request(self.command, unquote(split.path), query, body, headers)
                resp = outer.dispatch(req)
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                self.wfile.write(resp.body)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def _injected(self, req: Request) -> Injected | None:
        for inj in self.injected:
            if inj.times > 0 and inj.method == req.method and inj.pattern.search(req.path):
                inj.times -= 1
                if inj.then is not None:
                    inj.then()
                return inj
        return None

    def dispatch(self, req: Request) -> Response:
        with self.lock:
            self.log.append((req.method, req.path))
            inj = self._injected(req)
            try:
                if inj is not None and not inj.after_handling:
                    raise inj.error
                for handler in self.handlers:
                    resp = handler.handle(req)
                    if resp is not None:
                        break
                else:
                    raise ApiError("NOT_FOUND", f"the fake has no route {req.method} {req.path}")
                if inj is not None:
                    raise inj.error
                return resp
            except ApiError as err:
                return _json(err.body(), STATUS_CODES[err.status])
