"""A third-party provider, installed as a real distribution for the entry-point tests."""

from __future__ import annotations

from collections.abc import Iterator

from mlcloud.provider import Capability, Provider
from mlcloud.records import JobRecord, JobState, Plan, PlanStep, new_job_id
from mlcloud.specs import TrainingJob


class EchoProvider(Provider[None]):
    """Runs nothing: a job 'succeeds' at submit and its log is its command line."""

    type = "echo"
    capabilities = frozenset({Capability.LOGS})

    def _plan_job(self, job: TrainingJob) -> Plan[TrainingJob]:
        step = PlanStep("echo.Run", {"command": list(job.command)})
        return self.make_plan("job", new_job_id(job.name), job, (step,))

    def _submit_job(self, plan: Plan[TrainingJob]) -> JobRecord:
        record = JobRecord(plan.id, plan.spec.name, self.name, self.type, JobState.SUCCEEDED,
                           details={"command": plan.steps[0].request["command"]})  # fmt: skip
        return self.store.add_job(record)

    def _job_status(self, record: JobRecord) -> JobRecord:
        return record

    def _job_logs(self, record: JobRecord, follow: bool) -> Iterator[str]:
        yield " ".join(record.details["command"])

    def _cancel_job(self, record: JobRecord) -> JobRecord:
        return record
