"""What the far end received: recorded inside the moto server, decoded with botocore's model.

``FAR_END`` wraps the moto server's WSGI application (see ``conftest.moto_url``) and keeps every
request of the JSON-protocol services the plans address (SageMaker, Application Auto Scaling,
CloudWatch Logs): its ``X-Amz-Target`` (the operation), its raw body and its User-Agent. Nothing
is taken from the client side: what is decoded here is the bytes the server read off the socket.

:meth:`Recorder.sent` turns them back into the plan's own format: each body is walked with the
operation's input shape from botocore's service model (the same model botocore serialized it
with), so blobs come back as bytes and timestamps as datetimes, then made JSON the way a plan
prints itself (``mlcloud.records.jsonable``). Only requests made by mlcloud's clients count
(botocore adds the profile's ``user_agent_extra`` "mlcloud"; the tests' own boto3 calls lack
it), and only writes: reads (Describe*/List*/Get*/Search*) are how a provider polls and are not
plan steps. S3 uploads (REST-XML, the staged code and model) are the plan's context, not steps.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlcloud.records import jsonable

SERVICES = ("sagemaker", "application-autoscaling", "logs")
READS = ("Describe", "List", "Get", "Search", "BatchDescribe", "BatchGet")
MLCLOUD_AGENT = "mlcloud"  # providers/sagemaker/clients.py: Config(user_agent_extra="mlcloud")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class Request:
    """One request as the server read it."""

    service: str  # botocore's name: "sagemaker", "application-autoscaling", "logs"
    operation: str  # "CreateTrainingJob"
    body: bytes
    user_agent: str

    @property
    def call(self) -> str:
        return f"{self.service}.{self.operation}"

    @property
    def by_mlcloud(self) -> bool:
        return MLCLOUD_AGENT in self.user_agent.split()

    @property
    def is_read(self) -> bool:
        return self.operation.startswith(READS)


@functools.cache
def _services_by_target_prefix() -> dict[str, str]:
    import botocore.session

    session = botocore.session.get_session()
    found = {}
    for name in SERVICES:
        found[session.get_service_model(name).metadata["targetPrefix"]] = name
    return found


@functools.cache
def _input_shape(service: str, operation: str) -> Any:
    import botocore.session

    model = botocore.session.get_session().get_service_model(service)
    return model.operation_model(operation).input_shape


def decode(value: Any, shape: Any) -> Any:
    """A JSON-protocol value back into what boto3 was given, by its shape in the model."""
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "structure":
        return {k: decode(v, shape.members.get(k)) for k, v in value.items()}
    if kind == "list":
        return [decode(v, shape.member) for v in value]
    if kind == "map":
        return {k: decode(v, shape.value) for k, v in value.items()}
    if kind == "blob":
        return base64.b64decode(value)
    if kind == "timestamp":
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        return dt.datetime.fromisoformat(str(value))
    return value


class Recorder:
    """The requests the moto server received, in arrival order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Request] = []

    def wrap(self, app: WSGIApp) -> WSGIApp:
        """``app`` recording each JSON-protocol request before handling it."""

        def recording(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            prefix, _, operation = target.rpartition(".")
            service = _services_by_target_prefix().get(prefix)
            if service is not None:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length) if length else b""
                environ["wsgi.input"] = io.BytesIO(body)  # the app reads it again
                agent = environ.get("HTTP_USER_AGENT", "")
                with self._lock:
                    self._requests.append(Request(service, operation, body, agent))
            return app(environ, start_response)

        return recording

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def sent(self) -> list[tuple[str, Any]]:
        """mlcloud's writes since the last ``clear``, as ``[(call, boto3 kwargs as JSON)]``."""
        import json

        out = []
        for request in self.requests:
            if not request.by_mlcloud or request.is_read:
                continue
            body = json.loads(request.body or b"{}")
            kwargs = decode(body, _input_shape(request.service, request.operation))
            out.append((request.call, jsonable(kwargs)))
        return out


FAR_END = Recorder()
