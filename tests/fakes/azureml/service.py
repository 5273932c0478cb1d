"""A small stateful Azure ML workspace: the ARM resources the mlcloud provider touches.

It keeps ARM resources (code and environment versions, jobs, models, online endpoints and
deployments) as the JSON the real service returns, answers long-running operations with an
``Azure-AsyncOperation`` (or ``Location``) header and a status URL, and returns ARM error
bodies; the data plane (run history, blobs, scoring) is in :mod:`.dataplane`. Tests drive what
a cloud would do on its own with :meth:`set_job_status` and :meth:`set_job_logs`, and inject
failures with :meth:`fail_next`. Every write it is sent is logged in ``received`` in the format
of an mlcloud plan (:mod:`.received`), for the conformance suite's "the far end received the
plan" tests.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.azureml import models
from tests.fakes.azureml.common import (
    API_HOST,
    ARM,
    BLOB_HOST,
    SCORING_HOST,
    TERMINAL,
    WS_PREFIX,
    Response,
    error,
    json_response,
)
from tests.fakes.azureml.dataplane import DataPlane
from tests.fakes.azureml.received import Received, decode


@dataclass
class Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    code: str
    message: str
    times: int = 1


class FakeAzureML(DataPlane):
    """One subscription / resource group / workspace; every other path answers 404."""

    def __init__(
        self,
        subscription: str = "00000000-0000-4000-8000-000000000001",
        group: str = "rg",
        workspace: str = "ws1",
    ):
        self.subscription = subscription
        self.group = group
        self.workspace = workspace
        self.resources: dict[str, dict[str, Any]] = {}  # lower-cased ARM path -> resource
        self.blobs: dict[str, bytes] = {}  # "container/blob" -> bytes
        self.blocks: dict[str, bytes] = {}  # staged blocks by "container/blob/blockid"
        self.blob_meta: dict[str, dict[str, str]] = {}
        self.operations: dict[str, str] = {}  # operation id -> status
        self.job_logs: dict[str, str] = {}
        self.failures: list[Failure] = []
        self.scored: list[dict[str, Any]] = []
        self.predictor = lambda instances: [float(len(str(x))) for x in instances]
        self.loaded: dict[str, Any] = {}  # model id -> loaded predict function
        self.model_dirs: list[Any] = []
        self.received: list[Received] = []  # every planned write, in the plan's format

    # ---- test controls -------------------------------------------------------------------
    @property
    def ws_path(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{self.workspace}"
        )

    def fail_next(
        self, method: str, pattern: str, status: int, code: str, message: str, times: int = 1
    ) -> None:
        self.failures.append(
            Failure(method, re.compile(pattern, re.I), status, code, message, times)
        )

    def job(self, name: str) -> dict[str, Any]:
        return self.resources[self._key(f"/jobs/{name}")]

    def jobs(self) -> list[dict[str, Any]]:
        return [v for k, v in self.resources.items() if re.search(r"/jobs/[^/]+$", k)]

    def set_job_status(self, name: str, status: str, error_message: str | None = None) -> None:
        job = self.job(name)
        job["properties"]["status"] = status
        if error_message:
            job["properties"]["error"] = {"code": "UserError", "message": error_message}

    def set_job_logs(self, name: str, text: str) -> None:
        self.job_logs[name] = text

    def deployments(self, endpoint: str) -> dict[str, dict[str, Any]]:
        prefix = self._key(f"/onlineEndpoints/{endpoint}/deployments") + "/"
        return {
            k.rsplit("/", 1)[1]: v
            for k, v in self.resources.items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        }

    # ---- dispatch ------------------------------------------------------------------------
    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = unquote(parts.path)
        for failure in self.failures:
            if failure.method == method and failure.pattern.search(path) and failure.times > 0:
                failure.times -= 1
                return error(failure.status, failure.code, failure.message)
        if parts.netloc == BLOB_HOST:
            return self._blob(method, path, query, headers, body)
        if parts.netloc == SCORING_HOST:
            return self._score(path, headers, body)
        if parts.netloc == API_HOST:
            return self._data_plane(path)
        if path.startswith("/operations/"):
            return json_response(
                200, {"status": self.operations.get(path.rsplit("/", 1)[1], "Succeeded")}
            )
        m = WS_PREFIX.match(path)
        if parts.netloc != "management.azure.com" or m is None:
            return error(404, "NotFound", f"no route for {method} {url}")
        if (m["sub"], m["rg"].lower(), m["ws"].lower()) != (
            self.subscription,
            self.group.lower(),
            self.workspace.lower(),
        ):
            return error(404, "ResourceNotFound", f"workspace {m['ws']} not found")
        rest = m["rest"] or ""
        payload = json.loads(body) if body else None
        write = decode(method, rest, payload, self.resources.get(self._key(rest)))
        if write is not None:
            self.received.append(write)
        return self._workspace(method, rest, query, payload)

    def _key(self, rest: str) -> str:
        return (self.ws_path + rest).lower().rstrip("/")

    def _arm_id(self, rest: str) -> str:
        return self.ws_path + rest

    # ---- workspace-scoped ARM ------------------------------------------------------------
    def _workspace(self, method: str, rest: str, query: dict[str, str], payload: Any) -> Response:
        if rest == "":
            return self._get_workspace()
        special = [
            (r"^/codes/([^/]+)/versions/([^/]+)/startPendingUpload$", self._pending_upload),
            (r"^/jobs/([^/]+)/cancel$", self._cancel_job),
            (r"^/onlineEndpoints/([^/]+)/listKeys$", self._list_keys),
            (r"^/onlineEndpoints/([^/]+)/token$", self._list_keys),
            (r"^/onlineEndpoints/([^/]+)/deployments/([^/]+)/getLogs$", self._deployment_logs),
            (r"^/datastores/([^/]+)/listSecrets$", self._datastore_secrets),
        ]
        for pattern, handler in special:
            m = re.match(pattern, rest, re.I)
            if m and method == "POST":
                return handler(*m.groups())
        if method == "GET" and re.match(r"^/datastores$", rest, re.I):
            return json_response(200, {"value": [self._datastore()]})
        if method == "GET" and re.match(r"^/datastores/workspaceblobstore$", rest, re.I):
            return json_response(200, self._datastore())
        if method == "PUT":
            return self._put(rest, payload)
        if method == "GET":
            return self._get_or_list(rest, query)
        if method == "DELETE":
            return self._delete(rest)
        return error(404, "NotFound", f"no route for {method} {rest}")

    def _get_workspace(self) -> Response:
        return json_response(
            200,
            {
                "id": self.ws_path,
                "name": self.workspace,
                "type": "Microsoft.MachineLearningServices/workspaces",
                "location": "eastus",
                "kind": "Default",
                "properties": {
                    "discoveryUrl": f"https://{API_HOST}/discovery",
                    "mlFlowTrackingUri": "azureml://eastus.api.azureml.ms/mlflow/v1.0"
                    + self.ws_path,
                    "workspaceId": "00000000-0000-0000-0000-000000000001",
                    "storageAccount": "/subscriptions/x/storageAccounts/fakestore",
                },
            },
        )

    def _datastore(self) -> dict[str, Any]:
        return {
            "id": self._arm_id("/datastores/workspaceblobstore"),
            "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "datastoreType": "AzureBlob",
                "accountName": "fakestore",
                "containerName": "azureml-blobstore",
                "endpoint": "core.windows.net",
                "protocol": "https",
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
            },
        }

    def _datastore_secrets(self, name: str) -> Response:
        return json_response(200, {"secretsType": "AccountKey", "key": "ZmFrZWtleQ=="})

    def _pending_upload(self, name: str, version: str) -> Response:
        container = f"azureml-blobstore-{uuid.uuid4()}"
        blob_uri = f"https://{BLOB_HOST}/{container}"
        return json_response(
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": blob_uri,
                    "storageAccountArmId": "/subscriptions/x/storageAccounts/fakestore",
                    "credential": {
                        "credentialType": "SAS",
                        "sasUri": f"{blob_uri}?sv=2021-08-06&sig=fake",
                    },
                },
                "pendingUploadId": str(uuid.uuid4()),
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    def _put(self, rest: str, payload: dict[str, Any]) -> Response:
        key = self._key(rest)
        if (refused := models.refuse_put(rest, payload, self.resources.get(key))) is not None:
            return refused  # model versions are immutable but for tags/description
        existed = key in self.resources
        if re.match(r"^/onlineEndpoints/[^/]+$", rest, re.I):
            refused = self._bad_traffic(rest, payload)
            if refused is not None:
                return refused
        name = rest.rstrip("/").rsplit("/", 1)[1]
        resource = {
            **payload,
            "id": self._arm_id(rest),
            "name": name,
            "type": _arm_type(rest),
            "systemData": {
                "createdAt": "2026-01-01T00:00:00Z",
                "createdBy": "fake",
                "lastModifiedAt": "2026-01-01T00:00:00Z",
                "lastModifiedBy": "fake",
            },
        }
        props = resource.setdefault("properties", {})
        if re.match(r"^/jobs/[^/]+$", rest, re.I):
            if existed:
                return error(409, "UserError", f"job {name} already exists")
            props.setdefault("status", "Queued")
            props["services"] = {"Studio": {"endpoint": f"https://ml.azure.com/runs/{name}"}}
            props.setdefault("outputs", {})
        if re.match(r"^/models/[^/]+/versions/[^/]+$", rest, re.I):
            props.setdefault("flavors", {})  # the service always returns it; the SDK needs it
        lro = re.match(r"^/onlineEndpoints/[^/]+(/deployments/[^/]+)?$", rest, re.I)
        if lro:
            props["provisioningState"] = "Succeeded"
            props.setdefault("properties", {})
            if lro.group(1) is not None:  # the service's defaults for a deployment
                props.setdefault("scaleSettings", {"scaleType": "Default"})
                props.setdefault(
                    "requestSettings",
                    {"maxConcurrentRequestsPerInstance": 1, "requestTimeout": "PT5S"},
                )
            else:
                endpoint = name
                props["scoringUri"] = f"https://{SCORING_HOST}/{endpoint}/score"
                props["swaggerUri"] = f"https://{SCORING_HOST}/{endpoint}/swagger.json"
                props.setdefault("traffic", {})
        self.resources[key] = resource
        if lro:
            op = str(uuid.uuid4())
            self.operations[op] = "Succeeded"
            return json_response(
                200 if existed else 201,
                resource,
                {"Azure-AsyncOperation": f"{ARM}/operations/{op}?api-version=2023-04-01"},
            )
        return json_response(200 if existed else 201, resource)

    def _get_or_list(self, rest: str, query: dict[str, str]) -> Response:
        key = self._key(rest)
        if key in self.resources:
            return json_response(200, self.resources[key])
        prefix = key + "/"
        items = [
            v
            for k, v in self.resources.items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]
        if "hash" in query and re.match(r"^/codes/[^/]+/versions$", rest, re.I):
            # Anonymous code gets a fresh name per upload: the hash is matched workspace-wide.
            items = [
                v
                for k, v in self.resources.items()
                if re.search(r"/codes/[^/]+/versions/[^/]+$", k)
            ]
        if items or _is_collection(rest):
            if "hash" in query:
                items = [
                    v
                    for v in items
                    if v.get("properties", {}).get("properties", {}).get("hash_sha256")
                    == query["hash"]
                ]
            if (
                query.get("$orderBy", query.get("$orderby", ""))
                .lower()
                .startswith("createdtime desc")
            ):
                items = list(reversed(items))
            top = int(query.get("$top", "0") or 0)
            return json_response(200, {"value": items[:top] if top else items})
        return error(404, "UserError", f"{rest.lstrip('/')} not found")

    def _bad_traffic(self, rest: str, payload: dict[str, Any]) -> Response | None:
        """Azure's checks of an endpoint's traffic: whole percents for deployments of the
        endpoint, adding up to 100 (or 0: nothing takes traffic)."""
        props = payload.get("properties") or {}
        endpoint = rest.rstrip("/").rsplit("/", 1)[1]
        known = {d.lower() for d in self.deployments(endpoint)}
        for field in ("traffic", "mirrorTraffic"):
            split = props.get(field) or {}
            unknown = sorted(d for d in split if d.lower() not in known)
            if unknown:
                return error(400, "BadArgument", f"{field}: deployments {unknown} do not exist")
            if any(not isinstance(v, int) or not 0 <= v <= 100 for v in split.values()):
                return error(400, "BadArgument", f"{field}: values must be 0-100: {split}")
        total = sum((props.get("traffic") or {}).values())
        if total not in (0, 100):
            return error(400, "BadArgument", f"traffic must add up to 100, not {total}")
        return None

    def _delete(self, rest: str) -> Response:
        key = self._key(rest)
        if key not in self.resources:
            return (204, {}, b"") if _is_lro_path(rest) else error(404, "NotFound", "not found")
        m = re.match(r"^/onlineEndpoints/([^/]+)/deployments/([^/]+)$", rest, re.I)
        if m:  # Azure refuses to delete a deployment that still takes traffic
            endpoint = self.resources.get(self._key(f"/onlineEndpoints/{m[1]}")) or {}
            traffic = (endpoint.get("properties") or {}).get("traffic") or {}
            if any(d.lower() == m[2].lower() and pct for d, pct in traffic.items()):
                return error(400, "BadArgument", f"deployment {m[2]} still takes traffic")
        del self.resources[key]
        for child in [k for k in self.resources if k.startswith(key + "/")]:
            del self.resources[child]
        if _is_lro_path(rest):
            op = str(uuid.uuid4())
            self.operations[op] = "Succeeded"
            return (
                202,
                {
                    "Azure-AsyncOperation": f"{ARM}/operations/{op}?api-version=2023-04-01",
                    "Location": f"{ARM}/operations/{op}?api-version=2023-04-01",
                    "Retry-After": "0",
                },
                b"",
            )
        return 200, {}, b""

    def _cancel_job(self, name: str) -> Response:
        key = self._key(f"/jobs/{name}")
        if key not in self.resources:
            return error(404, "UserError", f"job {name} not found")
        props = self.resources[key]["properties"]
        if props.get("status") not in TERMINAL:
            props["status"] = "Canceled"
        op = str(uuid.uuid4())
        self.operations[op] = "Succeeded"
        return (
            202,
            {
                "Location": f"{ARM}/operations/{op}?api-version=2023-04-01",
                "Retry-After": "0",
            },
            b"",
        )

    def _list_keys(self, endpoint: str) -> Response:
        if self._key(f"/onlineEndpoints/{endpoint}") not in self.resources:
            return error(404, "UserError", f"endpoint {endpoint} not found")
        return json_response(200, {"primaryKey": f"key-{endpoint}", "secondaryKey": "key-2"})

    def _deployment_logs(self, endpoint: str, deployment: str) -> Response:
        return json_response(200, {"content": f"deployment {deployment} of {endpoint} ready\n"})


def _arm_type(rest: str) -> str:
    kinds = [p for i, p in enumerate(rest.strip("/").split("/")) if i % 2 == 0]
    return "Microsoft.MachineLearningServices/workspaces/" + "/".join(kinds)


def _is_collection(rest: str) -> bool:
    last = rest.strip("/").split("/")[-1].lower()
    return last in {"versions", "jobs", "onlineendpoints", "deployments", "codes", "models"}


def _is_lro_path(rest: str) -> bool:
    return bool(re.match(r"^/onlineEndpoints/[^/]+(/deployments/[^/]+)?$", rest, re.I))
