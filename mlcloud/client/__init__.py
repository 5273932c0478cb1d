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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlcloud import errors
from mlcloud.client.features import MonitorCalls, PipelineCalls, RolloutCalls
from mlcloud.client.handles import RemoteEndpoint, RemoteJob, RemoteRollouts, RemoteRun
from mlcloud.client.wire import (
    ROLLOUT_FINAL,
    SELF,
    SERVER_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    RemotePlan,
    _model_ref,
    _params,
    endpoint_record,
    error_from_problem,
    job_record,
    rollout_row,
)
from mlcloud.records import AliasMove, EndpointRecord, JobRecord, ModelVersionRecord
from mlcloud.specs import TrainingJob, load_job

__all__ = [
    "ROLLOUT_FINAL",
    "SELF",
    "Client",
    "RemoteEndpoint",
    "RemoteJob",
    "RemotePlan",
    "RemoteRollouts",
    "RemoteRun",
    "endpoint_record",
    "error_from_problem",
    "from_env",
    "job_record",
    "rollout_row",
]


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


class Client(RolloutCalls, PipelineCalls, MonitorCalls):
    """A team server's API, with :mod:`mlcloud.api`'s operations and return types."""

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
