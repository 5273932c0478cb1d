"""The HTTP client of a team server (``mlcloud server``): the same operations, records and
errors as :mod:`mlcloud.api`, over the network.

    from mlcloud.client import Client
    remote = Client("https://mlcloud.example.com", token="mlc_…")
    job = remote.train("examples/iris/job.yaml")
    for line in job.logs(follow=True): print(line)

Records come back as :class:`~mlcloud.records.JobRecord` / ``EndpointRecord``; a problem
document (RFC 9457) comes back as the same ``MlcloudError`` class the server raised, with its
message and hint (``kinds`` names the nearest class this mlcloud knows when it is older). The
CLI uses :func:`from_env` when ``MLCLOUD_SERVER`` is set (token: ``MLCLOUD_TOKEN`` or the file
``MLCLOUD_TOKEN_FILE`` names).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mlcloud import errors
from mlcloud.records import (
    AliasMove,
    EndpointRecord,
    EndpointState,
    JobRecord,
    JobState,
    ModelVersionRecord,
    PlanStep,
)
from mlcloud.specs import TrainingJob, load_job

SERVER_ENV, TOKEN_ENV, TOKEN_FILE_ENV = "MLCLOUD_SERVER", "MLCLOUD_TOKEN", "MLCLOUD_TOKEN_FILE"
SELF = "mlcloud-server"  # the provider_type of errors about the server itself


def from_env(environ: Mapping[str, str] | None = None) -> Client | None:
    """A client for ``MLCLOUD_SERVER`` (None when unset), with its token from the environment."""
    env = os.environ if environ is None else environ
    url = env.get(SERVER_ENV, "").strip()
    if not url:
        return None
    token = env.get(TOKEN_ENV) or None
    if token is None and env.get(TOKEN_FILE_ENV):
        path = Path(env[TOKEN_FILE_ENV]).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip() or None
        except OSError as e:
            raise errors.ConfigError(
                f"{TOKEN_FILE_ENV}={path}: cannot read it: {e.strerror or e}"
            ) from None
    return Client(url, token=token)


# ---- records and errors from JSON --------------------------------------------------------------
def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def job_record(data: Mapping[str, Any]) -> JobRecord:
    return JobRecord(**{**_known(JobRecord, data), "state": JobState(data["state"])})


def endpoint_record(data: Mapping[str, Any]) -> EndpointRecord:
    return EndpointRecord(**{**_known(EndpointRecord, data), "state": EndpointState(data["state"])})


def error_from_problem(body: Mapping[str, Any], status: int) -> errors.MlcloudError:
    """The MlcloudError a problem document describes: its class (or the nearest one this
    mlcloud knows), message, hint and attributes, without running any constructor's logic."""
    cls: type[errors.MlcloudError] = errors.MlcloudError
    for name in body.get("kinds") or [body.get("kind")]:
        found = getattr(errors, str(name), None)
        if isinstance(found, type) and issubclass(found, errors.MlcloudError):
            cls = found
            break
    error = cls.__new__(cls)
    message = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    errors.MlcloudError.__init__(error, message, hint=body.get("hint"))
    if issubclass(cls, errors.ProviderError):
        error.provider_type = str(body.get("provider_type") or SELF)  # type: ignore[attr-defined]
        error.profile = body.get("profile")  # type: ignore[attr-defined]
        error.code = body.get("code")  # type: ignore[attr-defined]
    for name in ("retryable", "feature", "provider", "install", "quota"):
        if name in body:
            setattr(error, name, body[name])
    return error


@dataclass(frozen=True)
class RemotePlan:
    """A plan as the server printed it (``to_dict`` is the same document as a local plan's)."""

    provider: str
    type: str
    steps: tuple[PlanStep, ...]
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "type": self.type,
            "steps": [{"call": s.call, "request": s.request} for s in self.steps],
        }

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> RemotePlan:
        plan = answer["plan"]
        steps = tuple(PlanStep(s["call"], s["request"]) for s in plan["steps"])
        return cls(plan["provider"], plan["type"], steps, tuple(answer.get("warnings") or ()))


class Client:
    """A team server's API, with :mod:`mlcloud.api`'s operations and return types."""

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

    # ---- jobs --------------------------------------------------------------------------------
    def load_job_spec(
        self, job: TrainingJob | str | Path, overrides: Sequence[str] = ()
    ) -> TrainingJob:
        """A job file is read here (its relative paths resolved here, as locally)."""
        if isinstance(job, TrainingJob):
            return job
        return load_job(Path(job), list(overrides))

    def plan(
        self, job: TrainingJob | str | Path, provider: str | None = None,
        overrides: Sequence[str] | None = None,
    ) -> RemotePlan:  # fmt: skip
        spec = self.load_job_spec(job, overrides or ())
        answer = self.call("POST", "/v1/jobs", params=_params(provider=provider, dry_run=True),
                           json=spec.model_dump(mode="json"))  # fmt: skip
        return RemotePlan.from_answer(answer)

    def train(
        self, job: TrainingJob | str | Path, provider: str | None = None,
        overrides: Sequence[str] | None = None,
    ) -> RemoteJob:  # fmt: skip
        spec = self.load_job_spec(job, overrides or ())
        answer = self.call("POST", "/v1/jobs", params=_params(provider=provider),
                           json=spec.model_dump(mode="json"))  # fmt: skip
        return RemoteJob(self, job_record(answer))

    def job(self, job_id: str) -> RemoteJob:
        handle = RemoteJob(self, job_record({"id": job_id, "name": "", "provider": "",
                                             "type": "", "state": "PENDING"}))  # fmt: skip
        handle.status()
        return handle

    def list_jobs(self, provider: str | None = None, limit: int = 50) -> list[JobRecord]:
        answer = self.call("GET", "/v1/jobs", params=_params(provider=provider, limit=limit))
        return [job_record(r) for r in answer]

    # ---- endpoints ---------------------------------------------------------------------------
    def plan_deploy(
        self, model: str, name: str, provider: str | None = None, **options: Any
    ) -> RemotePlan:
        body = {"model": _model_ref(model), "name": name, "provider": provider,
                "dry_run": True, "options": options}  # fmt: skip
        return RemotePlan.from_answer(self.call("POST", "/v1/endpoints", json=body))

    def deploy(
        self, model: str, name: str, provider: str | None = None, *, force: bool = False,
        **options: Any,
    ) -> RemoteEndpoint:  # fmt: skip
        body = {"model": _model_ref(model), "name": name, "provider": provider,
                "force": force, "options": options}  # fmt: skip
        answer = self.call("POST", "/v1/endpoints", json=body)
        endpoint = RemoteEndpoint(self, endpoint_record(answer["record"]))
        if answer.get("previous"):
            endpoint.previous = endpoint_record(answer["previous"])
        return endpoint

    def endpoint(self, name: str, provider: str | None = None) -> RemoteEndpoint:
        answer = self.call("GET", f"/v1/endpoints/{name}", params=_params(provider=provider))
        return RemoteEndpoint(self, endpoint_record(answer), provider)

    def list_endpoints(self, provider: str | None = None) -> list[EndpointRecord]:
        answer = self.call("GET", "/v1/endpoints", params=_params(provider=provider))
        return [endpoint_record(r) for r in answer]

    # ---- models (the registry) ---------------------------------------------------------------
    def register_model(
        self, source: str, name: str, *, alias: str | None = None, provider: str | None = None,
        reason: str | None = None,
    ) -> ModelVersionRecord:  # fmt: skip
        body = {"source": _model_ref(source), "name": name, "alias": alias,
                "provider": provider, "reason": reason}  # fmt: skip
        return ModelVersionRecord(**self.call("POST", "/v1/models", json=body))

    def list_models(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/models"))

    def model(self, ref: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/v1/models/{ref}"))

    def move_alias(
        self, name: str, alias: str, version: int, *, reason: str | None = None,
        expect: int | None = None,
    ) -> AliasMove:  # fmt: skip
        body = {"version": version, "reason": reason, "expect": expect}
        return AliasMove(**self.call("PUT", f"/v1/models/{name}/aliases/{alias}", json=body))

    def rollback_model(
        self, name: str, alias: str = "champion", *, reason: str | None = None
    ) -> AliasMove:
        path = f"/v1/models/{name}/aliases/{alias}:rollback"
        return AliasMove(**self.call("POST", path, json={"reason": reason}))

    def alias_history(self, name: str) -> list[AliasMove]:
        return [AliasMove(**m) for m in self.call("GET", f"/v1/models/{name}/history")]

    def delete_model_version(self, name: str, version: int) -> None:
        self.call("DELETE", f"/v1/models/{name}/versions/{version}")


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _model_ref(model: str) -> str:
    """A model directory given by a relative path is sent as its absolute path."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


class RemoteJob:
    """:class:`mlcloud.api.Job` over the API."""

    def __init__(self, client: Client, record: JobRecord) -> None:
        self.client = client
        self.record = record
        self._events: list[dict[str, Any]] = []

    @property
    def id(self) -> str:
        return self.record.id

    def _get(self, advance: bool) -> JobRecord:
        answer = self.client.call(
            "GET", f"/v1/jobs/{self.id}", params={"advance": "true"} if advance else None
        )
        self._events = answer.pop("events", [])
        self.record = job_record(answer)
        return self.record

    def status(self) -> JobRecord:
        return self._get(advance=False)

    def advance(self) -> JobRecord:
        return self._get(advance=True)

    def events(self) -> list[dict[str, Any]]:
        return self._events

    def logs(self, follow: bool = False, poll: float = 0.5) -> Iterator[str]:
        """Log lines, streamed by the server (following: until the job ends)."""
        params = {"follow": "true"} if follow else {}
        for event, data in self.client.events(f"/v1/jobs/{self.id}/logs", params):
            if event == "error":
                raise error_from_problem(json.loads(data), 500)
            if event == "end":
                return
            yield data

    def cancel(self) -> JobRecord:
        self.record = job_record(self.client.call("POST", f"/v1/jobs/{self.id}:cancel"))
        return self.record

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> JobRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.advance().state.terminal:
            if deadline is not None and time.monotonic() > deadline:
                raise errors.Transient(
                    f"job {self.id} still {self.record.state} after {timeout:.0f}s",
                    provider_type=self.record.type, profile=self.record.provider,
                    code="WaitTimeout", hint=f"it keeps running: mlcloud logs {self.id} -f",
                )  # fmt: skip
            time.sleep(poll)
        return self.record

    @property
    def model_dir(self) -> str | None:
        return self.record.outputs.get("model_dir")

    def __repr__(self) -> str:
        return f"RemoteJob({self.id!r}, {self.record.state}, server={self.client.url!r})"


class RemoteEndpoint:
    """:class:`mlcloud.api.Endpoint` over the API (predict goes through the gateway)."""

    def __init__(self, client: Client, record: EndpointRecord, provider: str | None = None) -> None:
        self.client = client
        self.record = record
        self.provider = provider
        self.previous: EndpointRecord | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def url(self) -> str | None:
        return self.record.url

    def _params(self) -> dict[str, Any]:
        return _params(provider=self.provider or self.record.provider or None)

    def status(self) -> EndpointRecord:
        answer = self.client.call("GET", f"/v1/endpoints/{self.name}", params=self._params())
        self.record = endpoint_record(answer)
        return self.record

    def predict(self, payload: Any) -> Any:
        if isinstance(payload, list):
            payload = {"instances": payload}
        return self.client.call(
            "POST", f"/v1/endpoints/{self.name}:predict", params=self._params(), json=payload
        )

    def undeploy(self) -> None:
        self.client.call("DELETE", f"/v1/endpoints/{self.name}", params=self._params())

    def __repr__(self) -> str:
        return f"RemoteEndpoint({self.name!r}, {self.record.state}, server={self.client.url!r})"
