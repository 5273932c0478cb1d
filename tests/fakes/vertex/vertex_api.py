"""The Vertex AI (and Cloud Logging entries:list) routes of the fake, with in-memory state.

State is kept as real protobuf messages; every answer is ``MessageToJson`` of the real response
type. Behaviour follows the documented API: CustomJobs start PENDING and are moved by test hooks;
cancel goes through CANCELLING; model uploads, endpoint create/delete and (un)deploys are
long-running operations that finish on the first poll; a deployed model can only be undeployed
once it has no traffic, and an endpoint can only be deleted once it has no deployed models.
"""

from __future__ import annotations

import itertools
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud import aiplatform_v1 as v1
from google.cloud.logging_v2 import types as logging_types
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format
from google.protobuf.message import Message

from tests.fakes.vertex.server import ApiError, Request, Response, Storage, parse, to_json

LOC = r"projects/[^/]+/locations/[^/]+"
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
Predictor = Callable[[Message, list[Any]], list[Any]]


def _json(msg: Message) -> Response:
    return Response(body=json_format.MessageToJson(msg).encode())


def _now(msg: Any) -> None:
    msg.GetCurrentTime()


def _snake(field: str) -> str:
    """A field mask path as the REST front end takes it (``trafficSplit``) in proto form."""
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), field)


class VertexApi:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.workdir = tempfile.TemporaryDirectory(prefix="fake-vertex-")
        self._served: dict[tuple[str, str], Any] = {}
        self.jobs: dict[str, Message] = {}
        self.models: dict[str, list[Message]] = {}  # model name -> versions
        self.endpoints: dict[str, Message] = {}
        self.operations: dict[str, tuple[operations_pb2.Operation, bool]] = {}
        self.logs: list[dict[str, Any]] = []
        # every create/upload/deploy/undeploy as (call, request): the call named as plans name
        # it ("JobService.CreateCustomJob"), the request rebuilt from the URL and the body and
        # printed as proto-JSON, i.e. what the far end received in the plan's own format
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.predictor: Predictor | None = None
        self._ids = itertools.count(1000)
        self._rng = random.Random(0)

    # ---- test hooks --------------------------------------------------------------------------
    def set_job_state(self, name: str, state: str, error: str | None = None) -> None:
        job = self.jobs[name]
        job.state = v1.JobState[state].value
        if state == "JOB_STATE_RUNNING":
            _now(job.start_time)
        if state in TERMINAL:
            _now(job.end_time)
        if error:
            job.error.code = 3
            job.error.message = error
        _now(job.update_time)

    def add_log(self, job_name: str, *lines: str) -> None:
        job_id = job_name.rsplit("/", 1)[-1]
        for line in lines:
            stamp = time.time()
            self.logs.append(
                {
                    "logName": "projects/p/logs/workerpool0-0",
                    "resource": {"type": "ml_job", "labels": {"job_id": job_id}},
                    "textPayload": line,
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
                    + f".{int(stamp % 1 * 1e6):06d}Z",
                    "insertId": str(next(self._ids)),
                }
            )

    def calls(self, call: str) -> list[dict[str, Any]]:
        """The requests received for ``call`` (e.g. ``"EndpointService.DeployModel"``)."""
        return [request for name, request in self.received if name == call]

    # ---- helpers -----------------------------------------------------------------------------
    def _record(self, call: str, request: Message) -> None:
        self.received.append((call, to_json(request)))

    @staticmethod
    def _bind(request: Message, field: str, value: str) -> Message:
        """Put a URL path parameter into the request, as Google's REST front end does."""
        if getattr(request, field) not in ("", value):
            raise ApiError("INVALID_ARGUMENT", f"{field} in the body differs from the URL")
        setattr(request, field, value)
        return request

    def _operation(self, parent: str, response: Message | None) -> Response:
        name = f"{parent}/operations/{next(self._ids)}"
        op = operations_pb2.Operation(name=name, done=False)
        if response is not None:
            op.response.Pack(response)
        self.operations[name] = (op, False)
        return _json(operations_pb2.Operation(name=name, done=False))

    def _get_operation(self, name: str) -> Response:
        if name not in self.operations:
            raise ApiError("NOT_FOUND", f"Operation {name} not found")
        op, _ = self.operations[name]
        op.done = True  # finishes on the first poll: the client really polls
        return _json(op)

    def _model(self, ref: str) -> Message:
        base, _, version = ref.partition("@")
        versions = self.models.get(base)
        if not versions:
            raise ApiError("NOT_FOUND", f"Model {base} not found")
        if not version:
            return versions[-1]
        for model in versions:
            if version == model.version_id or version in model.version_aliases:
                return model
        raise ApiError("NOT_FOUND", f"Model version {ref} not found")

    def _endpoint(self, name: str) -> Message:
        if name not in self.endpoints:
            raise ApiError("NOT_FOUND", f"Endpoint {name} not found")
        return self.endpoints[name]

    # ---- dispatch ----------------------------------------------------------------------------
    def handle(self, req: Request) -> Response | None:
        if req.path.startswith("/v2/entries:list"):
            return self._list_entries(req)
        m = re.fullmatch(r"/(?:v1|ui)/(.+)", req.path)
        if m is None:
            return None
        path, meth = m[1], req.method
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("GET", rf"{LOC}(?:/[^/]+/[^/]+)?/operations/[^/]+", self._get_operation),
            ("POST", rf"({LOC})/customJobs", self._create_job),
            ("GET", rf"({LOC})/customJobs", self._list_jobs),
            ("GET", rf"{LOC}/customJobs/[^/:]+", self._get_job),
            ("POST", rf"({LOC}/customJobs/[^/:]+):cancel", self._cancel_job),
            ("POST", rf"({LOC})/models:upload", self._upload_model),
            ("GET", rf"{LOC}/models/[^/:]+", self._get_model),
            ("POST", rf"({LOC})/endpoints", self._create_endpoint),
            ("GET", rf"{LOC}/endpoints/[^/:]+", self._get_endpoint),
            ("DELETE", rf"{LOC}/endpoints/[^/:]+", self._delete_endpoint),
            ("PATCH", rf"{LOC}/endpoints/[^/:]+", self._update_endpoint),
            ("POST", rf"({LOC}/endpoints/[^/:]+):deployModel", self._deploy),
            ("POST", rf"({LOC}/endpoints/[^/:]+):undeployModel", self._undeploy),
            ("POST", rf"({LOC}/endpoints/[^/:]+):predict", self._predict),
        ]
        for method, pattern, fn in routes:
            match = re.fullmatch(pattern, path)
            if method == meth and match:
                arg = match[1] if match.groups() else path
                return fn(req, arg) if fn.__code__.co_argcount == 3 else fn(arg)
        return None

    # ---- jobs --------------------------------------------------------------------------------
    def _create_job(self, req: Request, parent: str) -> Response:
        job = parse(v1.CustomJob, req.body)
        request = v1.CreateCustomJobRequest.pb()(parent=parent, custom_job=job)
        self._record("JobService.CreateCustomJob", request)
        if not job.display_name or not job.job_spec.worker_pool_specs:
            raise ApiError("INVALID_ARGUMENT", "display_name and worker_pool_specs are required")
        for pool in job.job_spec.worker_pool_specs:
            if not pool.machine_spec.machine_type or not pool.container_spec.image_uri:
                raise ApiError("INVALID_ARGUMENT", "each worker pool needs a machine and image")
        job.name = f"{parent}/customJobs/{next(self._ids)}"
        job.state = v1.JobState.JOB_STATE_PENDING.value
        _now(job.create_time)
        _now(job.update_time)
        self.jobs[job.name] = job
        return _json(job)

    def _list_jobs(self, req: Request, parent: str) -> Response:
        wanted: dict[str, str] = {}
        text = req.query.get("filter", "")
        for clause in filter(None, (c.strip() for c in text.split(" AND "))):
            m = re.fullmatch(r'labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"', clause)
            if m is None:
                raise ApiError("INVALID_ARGUMENT", f"the fake cannot filter on {clause!r}")
            wanted[m[1]] = m[2]
        resp = v1.ListCustomJobsResponse.pb()()
        for name, job in self.jobs.items():
            if name.startswith(parent + "/") and all(
                job.labels.get(k) == v for k, v in wanted.items()
            ):
                resp.custom_jobs.append(job)
        return _json(resp)

    def _get_job(self, name: str) -> Response:
        if name not in self.jobs:
            raise ApiError("NOT_FOUND", f"CustomJob {name} not found")
        job = self.jobs[name]
        answer = _json(job)
        if job.state == v1.JobState.JOB_STATE_CANCELLING.value:
            self.set_job_state(name, "JOB_STATE_CANCELLED")  # stops by the next look
        return answer

    def _cancel_job(self, req: Request, name: str) -> Response:
        parse(v1.CancelCustomJobRequest, req.body)
        if name not in self.jobs:
            raise ApiError("NOT_FOUND", f"CustomJob {name} not found")
        job = self.jobs[name]
        if v1.JobState(job.state).name in TERMINAL:
            raise ApiError("FAILED_PRECONDITION", f"CustomJob {name} is already finished")
        self.set_job_state(name, "JOB_STATE_CANCELLING")
        return _json(empty_pb2.Empty())

    # ---- models ------------------------------------------------------------------------------
    def _upload_model(self, req: Request, parent: str) -> Response:
        request = self._bind(parse(v1.UploadModelRequest, req.body), "parent", parent)
        self._record("ModelService.UploadModel", request)
        model = request.model
        if not model.display_name or not model.container_spec.image_uri:
            raise ApiError("INVALID_ARGUMENT", "display_name and container_spec are required")
        if request.parent_model:
            versions = self.models.get(request.parent_model)
            if not versions:
                raise ApiError("NOT_FOUND", f"Model {request.parent_model} not found")
            name = request.parent_model
        else:
            name = f"{parent}/models/{request.model_id or next(self._ids)}"
            if name in self.models:
                raise ApiError("ALREADY_EXISTS", f"Model {name} already exists")
            versions = self.models[name] = []
        taken = {a for v in versions for a in v.version_aliases}
        if taken & set(model.version_aliases):
            raise ApiError("ALREADY_EXISTS", f"alias {sorted(taken & set(model.version_aliases))}")
        model.name = name
        model.version_id = str(len(versions) + 1)
        _now(model.create_time)
        versions.append(model)
        response = v1.UploadModelResponse.pb()(model=name, model_version_id=model.version_id)
        return self._operation(parent, response)

    def _get_model(self, ref: str) -> Response:
        return _json(self._model(ref))

    # ---- endpoints ---------------------------------------------------------------------------
    def _create_endpoint(self, req: Request, parent: str) -> Response:
        endpoint = parse(v1.Endpoint, req.body)
        request = v1.CreateEndpointRequest.pb()(
            parent=parent, endpoint_id=req.query.get("endpointId", ""), endpoint=endpoint
        )
        self._record("EndpointService.CreateEndpoint", request)
        ident = req.query.get("endpointId") or str(next(self._ids))
        name = f"{parent}/endpoints/{ident}"
        if name in self.endpoints:
            raise ApiError("ALREADY_EXISTS", f"Endpoint {name} already exists")
        endpoint.name = name
        _now(endpoint.create_time)
        self.endpoints[name] = endpoint
        return self._operation(parent, endpoint)

    def _get_endpoint(self, name: str) -> Response:
        return _json(self._endpoint(name))

    def _delete_endpoint(self, name: str) -> Response:
        endpoint = self._endpoint(name)
        if endpoint.deployed_models:
            raise ApiError("FAILED_PRECONDITION", f"Endpoint {name} still has deployed models")
        del self.endpoints[name]
        return self._operation(name.rsplit("/endpoints/", 1)[0], empty_pb2.Empty())

    def _update_endpoint(self, req: Request, name: str) -> Response:
        """UpdateEndpoint (synchronous in v1): the fields ``updateMask`` names, nothing else;
        a new ``traffic_split`` must give deployed models percentages adding up to 100."""
        endpoint = self._bind(parse(v1.Endpoint, req.body), "name", name)
        request = v1.UpdateEndpointRequest.pb()(endpoint=endpoint)
        paths = [p for p in req.query.get("updateMask", "").split(",") if p]
        request.update_mask.paths.extend(_snake(p) for p in paths)
        self._record("EndpointService.UpdateEndpoint", request)
        current = self._endpoint(name)
        allowed = {"display_name", "description", "labels", "traffic_split"}
        allowed.add("predict_request_response_logging_config")  # capture (issue 13)
        if not paths or not set(request.update_mask.paths) <= allowed:
            raise ApiError("INVALID_ARGUMENT", f"update_mask {paths} is not supported")
        for path in request.update_mask.paths:
            if path == "traffic_split":
                self._set_split(current, dict(endpoint.traffic_split))
            elif path == "predict_request_response_logging_config":  # a message: copied
                getattr(current, path).CopyFrom(getattr(endpoint, path))
            elif path == "labels":
                current.labels.clear()
                current.labels.update(dict(endpoint.labels))
            else:
                setattr(current, path, getattr(endpoint, path))
        _now(current.update_time)
        return _json(current)

    def _set_split(self, endpoint: Message, split: dict[str, int], new_id: str = "") -> None:
        split = {new_id if k == "0" else k: v for k, v in split.items()}
        ids = {dm.id for dm in endpoint.deployed_models}
        if sum(split.values()) != 100 or not set(split) <= ids:
            raise ApiError("INVALID_ARGUMENT", f"bad traffic split {split} for models {ids}")
        endpoint.traffic_split.clear()
        endpoint.traffic_split.update({k: v for k, v in split.items() if v})

    def _deploy(self, req: Request, name: str) -> Response:
        request = self._bind(parse(v1.DeployModelRequest, req.body), "endpoint", name)
        self._record("EndpointService.DeployModel", request)
        endpoint = self._endpoint(name)
        model = self._model(request.deployed_model.model)
        res = request.deployed_model.dedicated_resources
        if not res.machine_spec.machine_type or res.min_replica_count < 1:
            raise ApiError("INVALID_ARGUMENT", "dedicated_resources need a machine and replicas")
        deployed = endpoint.deployed_models.add()
        deployed.CopyFrom(request.deployed_model)
        deployed.id = str(next(self._ids))
        deployed.model = model.name
        deployed.model_version_id = model.version_id
        _now(deployed.create_time)
        split = dict(request.traffic_split) or (
            {} if len(endpoint.deployed_models) > 1 else {"0": 100}
        )
        if split:
            try:
                self._set_split(endpoint, split, deployed.id)
            except ApiError:
                endpoint.deployed_models.pop()
                raise
        response = v1.DeployModelResponse.pb()()
        response.deployed_model.CopyFrom(deployed)
        return self._operation(name.rsplit("/endpoints/", 1)[0], response)

    def _undeploy(self, req: Request, name: str) -> Response:
        request = self._bind(parse(v1.UndeployModelRequest, req.body), "endpoint", name)
        self._record("EndpointService.UndeployModel", request)
        endpoint = self._endpoint(name)
        index = next(
            (i for i, dm in enumerate(endpoint.deployed_models)
             if dm.id == request.deployed_model_id),
            None,
        )  # fmt: skip
        if index is None:
            raise ApiError("NOT_FOUND", f"DeployedModel {request.deployed_model_id} not found")
        last = len(endpoint.deployed_models) == 1
        if request.traffic_split:
            self._set_split(endpoint, dict(request.traffic_split))
        elif endpoint.traffic_split.get(request.deployed_model_id) and not last:
            raise ApiError(
                "FAILED_PRECONDITION",
                f"DeployedModel {request.deployed_model_id} still receives traffic",
            )
        del endpoint.deployed_models[index]
        endpoint.traffic_split.pop(request.deployed_model_id, None)
        if last:
            endpoint.traffic_split.clear()
        return self._operation(name.rsplit("/endpoints/", 1)[0], v1.UndeployModelResponse.pb()())

    def _predict(self, req: Request, name: str) -> Response:
        request = parse(v1.PredictRequest, req.body)
        endpoint = self._endpoint(name)
        if not endpoint.traffic_split:
            raise ApiError("FAILED_PRECONDITION", f"Endpoint {name} has no deployed model")
        ids, weights = zip(*sorted(endpoint.traffic_split.items()), strict=True)
        chosen = self._rng.choices(ids, weights=weights)[0]
        deployed = next(dm for dm in endpoint.deployed_models if dm.id == chosen)
        model = self._model(f"{deployed.model}@{deployed.model_version_id}")
        instances = [json_format.MessageToDict(v) for v in request.instances]
        if self.predictor is not None:
            predictions = self.predictor(model, instances)
        else:
            predictions = self._run_model(model, instances)
        response = v1.PredictResponse.pb()(
            deployed_model_id=deployed.id,
            model=model.name,
            model_version_id=model.version_id,
            model_display_name=model.display_name,
        )
        for p in predictions:
            json_format.ParseDict(p, response.predictions.add())
        return _json(response)

    def _run_model(self, model: Message, instances: list[Any]) -> list[Any]:
        """What the serving container does: load the uploaded artifact with mlcloud's own
        loader (hash-verified) and predict. The artifact is read from the fake's GCS, as
        Vertex copies ``artifact_uri`` to the container's AIP_STORAGE_URI."""
        from mlcloud.modeldir import TRUST_ENV
        from serving.inputs import InputError
        from serving.loaders import load_model

        key = (model.name, model.version_id)
        if key not in self._served:
            bucket, _, prefix = model.artifact_uri.removeprefix("gs://").partition("/")
            root = Path(self.workdir.name) / f"{len(self._served)}"
            found = 0
            for (b, name), blob in list(self.storage.blobs.items()):
                if b == bucket and name.startswith(prefix.rstrip("/") + "/"):
                    target = root / name[len(prefix.rstrip("/")) + 1 :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(blob.data)
                    found += 1
            if not found:
                raise ApiError("FAILED_PRECONDITION", f"no model files at {model.artifact_uri}")
            # each model gets its own copy of a same-named predictor module
            before = set(sys.modules)
            env = {e.name: e.value for e in model.container_spec.env}  # the container's env
            self._served[key] = load_model(root, trust=env.get(TRUST_ENV, ""))
            for name in set(sys.modules) - before:
                del sys.modules[name]
        try:
            return list(self._served[key].predict(instances))
        except InputError as err:
            raise ApiError("INVALID_ARGUMENT", str(err)) from None

    # ---- Cloud Logging -----------------------------------------------------------------------
    def _list_entries(self, req: Request) -> Response:
        request = parse(logging_types.ListLogEntriesRequest, req.body)
        m = re.search(r'resource\.labels\.job_id="(\d+)"', request.filter)
        since = re.search(r'timestamp>="([^"]+)"', request.filter)
        entries = [
            e
            for e in self.logs
            if (m is None or e["resource"]["labels"]["job_id"] == m[1])
            and (since is None or e["timestamp"] >= since[1])
        ]
        resp = logging_types.ListLogEntriesResponse.pb()()
        for entry in entries:
            json_format.ParseDict(entry, resp.entries.add())
        return _json(resp)
