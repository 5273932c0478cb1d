"""Handles on the server's objects: a job, an endpoint, the rollouts, a pipeline run, with
the same calls as :mod:`mlcloud.api`'s."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from mlcloud import errors
from mlcloud.client.wire import _params, endpoint_record, error_from_problem, job_record
from mlcloud.records import EndpointRecord, JobRecord

if TYPE_CHECKING:
    from mlcloud.client import Client
    from mlcloud.client.features import RolloutCalls
    from mlcloud.store.rollouts import RolloutRow


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


class RemoteRollouts:
    """:mod:`mlcloud.rollouts`' calls over the API (what ``mlcloud rollouts`` calls)."""

    def __init__(self, client: RolloutCalls) -> None:
        self.client = client

    def start(self, *args: Any, **kwargs: Any) -> RolloutRow:
        return self.client.start_rollout(*args, **kwargs)

    def list_rollouts(self, endpoint: str | None = None) -> list[RolloutRow]:
        return self.client.list_rollouts(endpoint)

    def get(self, rollout_id: str | int, *, heal: bool = True) -> RolloutRow:
        return self.client.rollout(rollout_id, heal=heal)

    def abort(self, rollout_id: str | int) -> RolloutRow:
        return self.client.abort_rollout(rollout_id)


class RemoteRun:
    """A pipeline run from the server: :class:`mlcloud.store.pipelines.RunRow`'s fields as
    attributes (``steps`` too, each with StepRow's), ``to_dict()`` as RunRow's, ``described``
    as :func:`mlcloud.pipelines.describe`'s document (None for a run of a list)."""

    def __init__(
        self, record: Mapping[str, Any], described: Mapping[str, Any] | None = None
    ) -> None:
        self.record = dict(record)
        self.described = None if described is None else dict(described)
        self.steps = [SimpleNamespace(**s) for s in self.record.get("steps") or ()]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["record"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)

    def __repr__(self) -> str:
        return f"RemoteRun({self.record.get('id')!r}, {self.record.get('state')})"
