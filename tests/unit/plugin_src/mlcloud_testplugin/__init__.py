"""A third-party provider, installed as a real distribution for the entry-point tests."""

from __future__ import annotations

from collections.abc import Iterator

from mlcloud.provider import Capability, JobRecord, JobState, Plan, PlanStep, Provider, new_job_id
from mlcloud.specs import TrainingJob


class EchoProvider(Provider):
    """Runs nothing: a job 'succeeds' at submit and its log is its command line."""

    type = "echo"
    capabilities = frozenset({Capability.LOGS})

    def plan_job(self, job: TrainingJob) -> Plan:
        self.check_job(job)
        request = {"command": list(job.command)}
        return Plan(self.name, self.type, "job", new_job_id(job.name), job,
                    (PlanStep("echo.Run", request),))  # fmt: skip

    def submit_job(self, plan: Plan) -> JobRecord:
        record = JobRecord(plan.id, plan.spec.name, self.name, self.type, JobState.SUCCEEDED,
                           details={"command": plan.steps[0].request["command"]})  # fmt: skip
        return self.store.add_job(record)

    def job_status(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)

    def job_logs(self, job_id: str, follow: bool = False) -> Iterator[str]:
        yield " ".join(self.store.get_job(job_id).details["command"])

    def cancel_job(self, job_id: str) -> JobRecord:
        return self.store.get_job(job_id)
