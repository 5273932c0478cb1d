"""The SDK facade: plan/submit as two steps, waiting advances the job, profiles resolved once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcloud import api, registry
from mlcloud.errors import MlcloudError, ModelError, SpecError, Transient
from mlcloud.provider import Capability, Provider
from mlcloud.records import JobRecord, JobState, Plan, PlanStep, new_job_id
from mlcloud.specs import TrainingJob

# What each attempt of a Stepper job does when advanced: a failed first attempt is re-submitted.
STEPS = (JobState.RUNNING, JobState.RESTARTING, JobState.RUNNING, JobState.SUCCEEDED)


class Stepper(Provider[None]):
    """Its jobs move only when advanced; ``job_status`` is a pure read."""

    type = "stepper"
    capabilities = frozenset({Capability.LOGS})
    advanced: list[str] = []

    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        step = PlanStep("stepper.Start", {"command": list(job.command)})
        return self.make_plan("job", new_job_id(job.name), job, (step,))

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        record = JobRecord(plan.id, plan.spec.name, self.name, self.type, JobState.PENDING)
        return self.store.add_job(record)

    def _job_status(self, record: JobRecord) -> JobRecord:
        return record

    def _advance_job(self, record: JobRecord) -> JobRecord:
        Stepper.advanced.append(record.id)
        step = STEPS[min(record.attempts, len(STEPS) - 1)]
        return self.store.update_job(record.id, state=step, attempts=record.attempts + 1)

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        yield f"{record.id} {record.state}"

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        return self.store.update_job(record.id, state=JobState.CANCELLED)


class Stuck(Stepper):
    type = "stuck"

    def _advance_job(self, record: JobRecord) -> JobRecord:
        return record


@pytest.fixture(autouse=True)
def _registered(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (Stepper, Stuck):
        entry = registry.ProviderEntry(cls.type, f"tests.unit.test_api:{cls.__name__}")
        monkeypatch.setitem(registry.BUILTIN, cls.type, entry)
    Stepper.advanced = []


def _job() -> TrainingJob:
    return TrainingJob(name="j", command=["python", "train.py"])


def test_plan_then_submit_is_train_in_two_steps() -> None:
    planned = api.plan(_job(), provider="stepper")
    assert (planned.provider, planned.type) == ("stepper", "stepper")
    assert api.list_jobs() == []  # planning sends nothing
    job = api.submit(planned)
    assert job.id == planned.id and job.record.state is JobState.PENDING
    assert [r.id for r in api.list_jobs("stepper")] == [planned.id]
    assert list(api.job(job.id).logs()) == [f"{job.id} PENDING"]


def test_wait_advances_the_job_and_status_is_a_pure_read() -> None:
    job = api.train(_job(), provider="stepper")
    assert job.status().state is JobState.PENDING and Stepper.advanced == []  # reads only
    final = job.wait(poll=0)
    assert final.state is JobState.SUCCEEDED and final.attempts == len(STEPS)
    assert Stepper.advanced == [job.id] * len(STEPS)
    assert [e["state"] for e in job.events()][-2:] == ["RUNNING", "SUCCEEDED"]


def test_wait_timeout_is_an_mlcloud_error() -> None:
    job = api.train(_job(), provider="stuck")
    with pytest.raises(Transient) as err:
        job.wait(timeout=0.05, poll=0.01)
    assert err.value.code == "WaitTimeout" and err.value.retryable
    assert (err.value.provider_type, err.value.profile) == ("stuck", "stuck")
    assert f"mlcloud logs {job.id}" in (err.value.hint or "")


def test_load_job_spec(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: f\ncommand: [python, x.py]\n")
    spec = api.load_job_spec(tmp_path / "job.yaml", ["hyperparameters.lr=0.5"])
    assert spec.hyperparameters == {"lr": 0.5} and spec.source == str(tmp_path)
    assert api.load_job_spec(_job()) == _job()
    with pytest.raises(SpecError, match="overrides apply to job files"):
        api.load_job_spec(_job(), ["name=x"])


def test_a_bad_spec_fails_before_any_provider_loads(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: Bad Name\ncommand: [x]\n")
    with pytest.raises(SpecError, match="invalid job file"):
        api.plan(tmp_path / "job.yaml", provider="no-such-provider")


def test_build_image_refuses_a_tampered_model_as_a_model_error(tmp_path: Path) -> None:
    from mlcloud import modeldir

    src = tmp_path / "src"
    src.mkdir()
    (src / "pred.py").write_text("class P:\n    def predict(self, rows):\n        return rows\n")
    model = modeldir.save(src, "custom", tmp_path / "model", predictor="pred:P")
    (model / "pred.py").write_text("tampered = True\n")
    with pytest.raises(ModelError, match=r"model file pred\.py does not match") as err:
        api.build_image(model, "x")
    assert isinstance(err.value, MlcloudError) and not isinstance(err.value, ValueError)
    with pytest.raises(SpecError, match=r"must be name\[:version\]"):
        api.build_image(model, "Bad Tag!")
