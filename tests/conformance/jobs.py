"""The provider conformance suite, job half: the single definition of what a provider must do.

A provider joins by subclassing :class:`JobConformance` in its own test module and supplying the
hooks below (like fsspec's ``tests/abstract``). Every provider runs the same tests against its
real SDK and a local far end (subprocesses, moto, the Vertex/Azure fakes).

Hooks a subclass provides:

* fixture ``provider`` -> a ready ``Provider`` (its store under a temp ``MLCLOUD_HOME``)
* ``make_job(tmp_path, behaviour)`` -> ``TrainingJob`` where behaviour is one of
  ``"succeed"`` (prints ``LOG_LINE`` and exits 0), ``"fail"`` (exits 3), ``"long"`` (runs until
  cancelled)
* ``settle(provider, record, behaviour)`` -> drive the job to its natural end: a real backend
  waits; a fake backend flips the job's state the way the cloud would (and seeds its logs)
* ``unsupported_job(tmp_path)`` -> a job using a feature the provider lacks, or ``None``
* ``received(provider, plan, record)`` -> what the far end received for this submission, as
  ``[(call, request), ...]`` decoded from the wire into the plan's own format (boto3 kwargs,
  proto-JSON, REST body, argv/env/cwd). The shared test asserts it equals ``plan.steps``: a
  provider that sends something other than what ``--dry-run`` printed fails here.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.provider import Provider
from mlcloud.records import JobRecord, JobState, Plan, jsonable
from mlcloud.specs import TrainingJob

LOG_LINE = "hello from mlcloud conformance"


Sent = list[tuple[str, Any]]


def _normalised(plan: Plan[Any]) -> str:
    text = plan.to_json().replace(plan.id, "<id>")
    for value in plan.volatile:
        text = text.replace(value, "<volatile>")
    return text


def planned(plan: Plan[Any]) -> Sent:
    """The plan's calls as the far end should receive them (JSON types)."""
    return [(step.call, jsonable(step.request)) for step in plan.steps]


class JobConformance:
    """Subclass me. See the module docstring for the hooks."""

    fails_with_exit_code: ClassVar[bool] = True  # the backend reports the process exit code

    # ---- hooks -------------------------------------------------------------------------------
    def make_job(self, tmp_path: Path, behaviour: str) -> TrainingJob:
        raise NotImplementedError

    def settle(self, provider: Provider, record: JobRecord, behaviour: str) -> JobRecord:
        raise NotImplementedError

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        return None

    def received(self, provider: Provider, plan: Plan[TrainingJob], record: JobRecord) -> Sent:
        raise NotImplementedError

    # ---- helpers -----------------------------------------------------------------------------
    @staticmethod
    def wait_for(provider: Provider, job_id: str, timeout: float = 60.0) -> JobRecord:
        """Poll until the job is terminal (for backends that really run the job)."""
        deadline = time.monotonic() + timeout
        record = provider.job_status(job_id)
        while not record.state.terminal:
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} still {record.state} after {timeout}s")
            time.sleep(0.1)
            record = provider.job_status(job_id)
        return record

    # ---- plan --------------------------------------------------------------------------------
    def test_plan_is_pure_and_printable(self, provider: Provider, tmp_path: Path) -> None:
        job = self.make_job(tmp_path, "succeed")
        first = provider.plan_job(job)
        second = provider.plan_job(job)
        assert isinstance(first, Plan)
        # Each plan may carry its own fresh job id (and ports picked for it); otherwise the
        # same spec plans to the same request.
        assert _normalised(first) == _normalised(second)
        data = json.loads(first.to_json())
        assert data["provider"] == provider.name
        assert data["type"] == provider.type
        assert data["steps"], "a plan has at least one native call"
        for step in data["steps"]:
            service, _, operation = step["call"].partition(".")
            assert service and operation, step["call"]
            assert isinstance(step["request"], dict)
        assert provider.store.list_jobs(provider=provider.name) == [], "plan_job wrote state"

    def test_unsupported_feature_raised_at_plan_time(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        job = self.unsupported_job(tmp_path)
        if job is None:
            pytest.skip(f"{provider.type} supports every feature a job can ask for")
        with pytest.raises(UnsupportedFeature) as err:
            provider.plan_job(job)
        assert err.value.provider.startswith(provider.type)

    def test_plan_from_another_provider_is_refused(
        self, provider: Provider, tmp_path: Path
    ) -> None:
        plan = provider.plan_job(self.make_job(tmp_path, "succeed"))
        for forged in (
            replace(plan, provider=plan.provider + "-other"),
            replace(plan, type=plan.type + "x"),
            replace(plan, kind="deploy"),
        ):
            with pytest.raises(SpecError, match="made by"):
                provider.submit_job(forged)
        assert provider.store.list_jobs(provider=provider.name) == []

    # ---- what reached the far end ------------------------------------------------------------
    def test_far_end_received_the_plan(self, provider: Provider, tmp_path: Path) -> None:
        plan = provider.plan_job(self.make_job(tmp_path, "succeed"))
        record = provider.submit_job(plan)
        assert self.received(provider, plan, record) == planned(plan)

    # ---- lifecycle ---------------------------------------------------------------------------
    def test_submit_status_logs_succeed(self, provider: Provider, tmp_path: Path) -> None:
        job = self.make_job(tmp_path, "succeed")
        record = provider.submit_job(provider.plan_job(job))
        assert record.id and record.name == job.name
        assert record.provider == provider.name and record.type == provider.type
        assert provider.store.get_job(record.id).id == record.id
        final = self.settle(provider, record, "succeed")
        assert final.state is JobState.SUCCEEDED, final.message
        assert provider.job_status(record.id).state is JobState.SUCCEEDED
        assert record.id in {j.id for j in provider.list_jobs()}
        logs = "\n".join(provider.job_logs(record.id))
        assert LOG_LINE in logs

    def test_failure_is_recorded(self, provider: Provider, tmp_path: Path) -> None:
        job = self.make_job(tmp_path, "fail")
        record = provider.submit_job(provider.plan_job(job))
        final = self.settle(provider, record, "fail")
        assert final.state is JobState.FAILED
        if self.fails_with_exit_code:
            assert final.exit_code == 3
        assert provider.store.get_job(record.id).state is JobState.FAILED

    def test_cancel_is_idempotent(self, provider: Provider, tmp_path: Path) -> None:
        job = self.make_job(tmp_path, "long")
        record = provider.submit_job(provider.plan_job(job))
        cancelled = provider.cancel_job(record.id)
        assert cancelled.state is JobState.CANCELLED
        again = provider.cancel_job(record.id)
        assert again.state is JobState.CANCELLED
        assert provider.job_status(record.id).state is JobState.CANCELLED

    def test_cancel_finished_job_keeps_its_state(self, provider: Provider, tmp_path: Path) -> None:
        job = self.make_job(tmp_path, "succeed")
        record = provider.submit_job(provider.plan_job(job))
        self.settle(provider, record, "succeed")
        assert provider.cancel_job(record.id).state is JobState.SUCCEEDED
