"""Hosts, routes and response helpers shared by the fake's control and data planes."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

ARM = "https://management.azure.com"
BLOB_HOST = "fakestore.blob.core.windows.net"
SCORING_HOST = "inference.fake.azureml.net"
API_HOST = "eastus.api.azureml.ms"  # the workspace's data plane (discovery, run history)
RUN_DETAILS = re.compile(
    r"^/history/v1\.0" + r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/[^/]+/runs/(?P<run>[^/]+)/details$",
    re.I,
)
WS_PREFIX = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)
Response = tuple[int, dict[str, str], bytes]
TERMINAL = {"Completed", "Failed", "Canceled", "NotResponding"}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    out = {"Content-Type": "application/json", "x-ms-request-id": str(uuid.uuid4())}
    out.update(headers or {})
    return status, out, json.dumps(body).encode()


def error(status: int, code: str, message: str) -> Response:
    """The ARM error body azure-core parses into ``HttpResponseError.error``."""
    return json_response(status, {"error": {"code": code, "message": message}})
