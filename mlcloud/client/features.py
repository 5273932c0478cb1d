"""The server's rollouts, pipelines and monitor calls (mixed into :class:`Client`)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mlcloud.client.handles import RemoteRollouts, RemoteRun
from mlcloud.client.transport import Transport
from mlcloud.client.wire import (
    ROLLOUT_FINAL,
    _model_ref,
    _params,
    _rollout_ref,
    error_from_problem,
    rollout_row,
)

if TYPE_CHECKING:
    from mlcloud.store.pipelines import Firing
    from mlcloud.store.rollouts import RolloutRow


class RolloutCalls(Transport):
    # ---- rollouts (the server's controller decides) -------------------------------------------
    @property
    def rollouts(self) -> RemoteRollouts:
        """:mod:`mlcloud.rollouts`' calls (start, list_rollouts, get, abort) over the API."""
        return RemoteRollouts(self)

    def start_rollout(
        self, model: str, name: str, provider: str | None = None, canary: int | None = None,
        bake_s: float | None = None, gate: str | None = None, steps: Sequence[int] | None = None,
        follow: bool = False, *, min_requests: int | None = None, trust_code: bool = False,
        force: bool = False,
    ) -> RolloutRow:  # fmt: skip
        """Deploy ``model`` as a canary of ``name``; ``follow``: wait until the server's
        controller decides. Unset arguments take the server's defaults."""
        body = _params(model=_model_ref(model), name=name, provider=provider, canary=canary,
                       bake_s=bake_s, gate=gate, steps=list(steps) if steps else None,
                       min_requests=min_requests, trust_code=trust_code, force=force)  # fmt: skip
        row = rollout_row(self.call("POST", "/v1/rollouts", json=body))
        return self.wait_rollout(row.id) if follow else row

    def list_rollouts(self, endpoint: str | None = None) -> list[RolloutRow]:
        answer = self.call("GET", "/v1/rollouts", params=_params(endpoint=endpoint))
        return [rollout_row(r) for r in answer]

    def rollout(self, rollout_id: str | int, *, heal: bool = True) -> RolloutRow:
        path = f"/v1/rollouts/{_rollout_ref(rollout_id)}"
        return rollout_row(self.call("GET", path, params={"heal": str(heal).lower()}))

    def abort_rollout(self, rollout_id: str | int) -> RolloutRow:
        return rollout_row(self.call("POST", f"/v1/rollouts/{_rollout_ref(rollout_id)}:abort"))

    def wait_rollout(
        self, rollout_id: str | int, timeout: float | None = None, poll: float = 0.5
    ) -> RolloutRow:
        """Poll until the rollout is final (promoted, rolled back, aborted, failed)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (row := self.rollout(rollout_id)).state not in ROLLOUT_FINAL:
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(poll)
        return row


class PipelineCalls(Transport):
    # ---- pipelines (the file is read and validated by the caller: mlcloud.pipelines.load) ----
    def run_pipeline(
        self, pipeline: Mapping[str, Any], provider: str | None = None, *, no_cache: bool = False
    ) -> RemoteRun:
        """Start a run of ``pipeline`` (as :func:`mlcloud.pipelines.load` returned it: its
        paths resolved on this machine) on the server; its runner runs there."""
        params = _params(provider=provider, no_cache=no_cache or None)
        answer = self.call("POST", "/v1/pipelines/runs", params=params, json=dict(pipeline))
        return RemoteRun(answer["run"], answer["described"])

    def plan_pipeline(
        self, pipeline: Mapping[str, Any], provider: str | None = None
    ) -> dict[str, Any]:
        """:func:`mlcloud.pipelines.plan`'s document (redacted by the server); runs nothing."""
        params = _params(provider=provider, dry_run=True)
        return dict(self.call("POST", "/v1/pipelines/runs", params=params, json=dict(pipeline)))

    def pipeline_run(self, run_id: str) -> RemoteRun:
        answer = self.call("GET", f"/v1/pipelines/runs/{run_id}")
        return RemoteRun(answer["run"], answer["described"])

    def pipeline_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RemoteRun]:
        params = _params(pipeline=pipeline, limit=limit)
        return [RemoteRun(r) for r in self.call("GET", "/v1/pipelines/runs", params=params)]

    def resume_pipeline(self, run_id: str) -> RemoteRun:
        answer = self.call("POST", f"/v1/pipelines/runs/{run_id}:resume")
        return RemoteRun(answer["run"], answer["described"])

    def cancel_pipeline(self, run_id: str) -> RemoteRun:
        answer = self.call("POST", f"/v1/pipelines/runs/{run_id}:cancel")
        return RemoteRun(answer["run"], answer["described"])

    def pipeline_logs(self, run_id: str, step: str | None = None) -> Iterator[str]:
        """The runner's log, or ``step``'s job log, streamed by the server."""
        path = f"/v1/pipelines/runs/{run_id}/logs"
        for event, data in self.events(path, _params(step=step)):
            if event == "error":
                raise error_from_problem(json.loads(data), 500)
            if event == "end":
                return
            yield data

    def schedule_pipeline(
        self, pipeline: Mapping[str, Any], file: str, provider: str | None = None
    ) -> dict[str, Any]:
        """Register ``pipeline``'s triggers (``file``: where it was read, shown by
        ``scheduled``); the server's scheduler fires them."""
        body = {"file": file, "pipeline": dict(pipeline), "provider": provider}
        return dict(self.call("POST", "/v1/pipelines/scheduled", json=body))

    def unschedule_pipeline(self, name: str) -> bool:
        return bool(self.call("DELETE", f"/v1/pipelines/scheduled/{name}")["unscheduled"])

    def scheduled_pipelines(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v1/pipelines/scheduled"))

    def trigger_pipeline(
        self, name: str, reason: str = "manual", detail: str | None = None
    ) -> Firing:
        from mlcloud.store.pipelines import Firing

        body = {"reason": reason, "detail": detail}
        return Firing(**self.call("POST", f"/v1/pipelines/scheduled/{name}:trigger", json=body))


class MonitorCalls(Transport):
    # ---- monitor (drift; reads only) ---------------------------------------------------------
    def drift_check(
        self, endpoint: str, *, window_s: float | None = None, baseline: str | None = None,
        alpha: float | None = None, correction: str | None = None,
        thresholds: Mapping[str, float] | None = None, methods: Mapping[str, str] | None = None,
        provider: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """One drift check on the server: the result's fields (NaN kept), for
        ``mlcloud.monitor.drift.DriftResult.from_fields``."""
        limits = [f"{k}={v!r}" for k, v in (thresholds or {}).items()]
        forced = [f"{k}={v}" for k, v in (methods or {}).items()]
        params = _params(window_s=window_s, baseline=baseline, alpha=alpha,
                         correction=correction, provider=provider, threshold=limits or None,
                         method=forced or None)  # fmt: skip
        return dict(self.call("GET", f"/v1/monitor/{endpoint}", params=params))

    def drift_history(self, endpoint: str, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's scheduled drift checks, newest first."""
        return list(self.call("GET", f"/v1/monitor/{endpoint}/history", params={"limit": limit}))
