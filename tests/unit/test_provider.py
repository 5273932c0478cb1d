"""The lifecycle rules the Provider base class owns, written once for every provider."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mlcloud.config import Profile
from mlcloud.errors import (
    Conflict,
    MlcloudError,
    NotFoundLocally,
    Origin,
    SpecError,
    map_exceptions,
)
from mlcloud.provider import Capability, Provider
from mlcloud.records import JobRecord, JobState, Plan, PlanStep, new_job_id
from mlcloud.specs import TrainingJob, validate_spec
from mlcloud.store import Store


def _translate(exc: Exception, origin: Origin) -> MlcloudError | None:
    if isinstance(exc, LookupError):
        return origin.error(Conflict, f"far end said: {exc}", code="Busy")
    return None


class Dummy(Provider[None]):
    type = "dummy"
    capabilities = frozenset({Capability.LOGS})
    translate_error = staticmethod(_translate)

    def __init__(self, profile: Profile, store: Store) -> None:
        super().__init__(profile, store)
        self.cancelled: list[str] = []
        self.fail_with: Exception | None = None

    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        return self.make_plan("job", new_job_id(job.name), job, (PlanStep("dummy.Run", {}),))

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        if self.fail_with is not None:
            raise self.fail_with
        record = JobRecord(plan.id, plan.spec.name, self.name, self.type, JobState.RUNNING)
        return self.store.add_job(record)

    def _job_status(self, record: JobRecord) -> JobRecord:
        return record

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        raise KeyError("log group")
        yield ""  # pragma: no cover

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        self.cancelled.append(record.id)
        return self.store.update_job(record.id, state=JobState.CANCELLED)


@pytest.fixture
def provider(tmp_path: Path) -> Dummy:
    return Dummy(Profile("mine", "dummy"), Store(tmp_path / "state.db"))


def _job() -> TrainingJob:
    return validate_spec(TrainingJob, {"name": "j", "command": ["true"]}, "job")


def test_bad_spec_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(TrainingJob, {"name": "Bad Name", "command": []}, "job")
    assert "name" in str(err.value) and "command" in str(err.value)


def test_unknown_job_is_a_clear_error(provider: Dummy) -> None:
    for call in (provider.job_status, provider.cancel_job, provider.job_logs):
        with pytest.raises(NotFoundLocally):
            call("no-such-job-000000")


def test_plan_from_elsewhere_is_refused(provider: Dummy) -> None:
    plan = provider.plan_job(_job())
    assert plan.provider == "mine" and plan.type == "dummy" and plan.kind == "job"
    with pytest.raises(SpecError, match="made by dummy"):
        provider.submit_job(replace(plan, provider="theirs"))


def test_cancel_twice_and_finished_jobs_are_unchanged(provider: Dummy) -> None:
    record = provider.submit_job(provider.plan_job(_job()))
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert provider.cancelled == [record.id], "a finished job is never cancelled again"


def test_unsupported_feature_names_the_profile(provider: Dummy) -> None:
    job = validate_spec(TrainingJob, {"name": "j", "command": ["x"], "spot": True}, "job")
    with pytest.raises(MlcloudError, match=r"dummy \(profile 'mine'\) does not support spot"):
        provider.plan_job(job)


def test_known_sdk_errors_are_mapped_with_typed_fields(provider: Dummy) -> None:
    provider.fail_with = LookupError("busy")
    with pytest.raises(Conflict) as err:
        provider.submit_job(provider.plan_job(_job()))
    assert (err.value.provider_type, err.value.profile, err.value.code) == ("dummy", "mine", "Busy")
    assert not err.value.retryable and isinstance(err.value.__cause__, LookupError)


def test_unknown_exceptions_are_reraised_untouched(provider: Dummy) -> None:
    provider.fail_with = ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        provider.submit_job(provider.plan_job(_job()))


def test_log_errors_are_mapped_too(provider: Dummy) -> None:
    record = provider.submit_job(provider.plan_job(_job()))
    with pytest.raises(Conflict):
        list(provider.job_logs(record.id))


def test_map_exceptions_lets_mlcloud_errors_through() -> None:
    with pytest.raises(SpecError), map_exceptions(_translate, Origin("x")):
        raise SpecError("mine")
