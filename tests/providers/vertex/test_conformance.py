"""The Vertex provider in the shared job conformance suite, against the fake Vertex server.

The fake does not run containers: ``settle`` moves the CustomJob the way Vertex would and seeds
its Cloud Logging entries, after which the provider's real status/log calls are checked.
``received`` is what the fake's REST front end received: each create/upload/deploy call decoded
from its URL and body into the real ``aiplatform_v1`` request and printed as proto-JSON.
"""

from __future__ import annotations

from pathlib import Path

from mlcloud.provider import Provider
from mlcloud.records import JobRecord, Plan
from mlcloud.specs import TrainingJob
from tests.conformance.jobs import LOG_LINE, JobConformance, Sent
from tests.fakes.vertex import FakeVertex

SCRIPTS = {
    "succeed": f"print({LOG_LINE!r})\n",
    "fail": "import sys\nsys.exit(3)\n",
    "long": "import time\ntime.sleep(3600)\n",
}


class TestVertexConformance(JobConformance):
    fake: FakeVertex

    def make_job(self, tmp_path: Path, behaviour: str) -> TrainingJob:
        src = tmp_path / f"src-{behaviour}"
        src.mkdir(exist_ok=True)
        (src / "job.py").write_text(SCRIPTS[behaviour])
        return TrainingJob(
            name=f"conf-{behaviour}",
            source=str(src),
            command=["python", "job.py"],
            image="python:3.11-slim",
            resources={"cpus": 1, "memory": "1Gi"},
        )

    def settle(self, provider: Provider, record: JobRecord, behaviour: str) -> JobRecord:
        fake = fake_of(provider)
        assert record.native_id is not None
        fake.vertex.set_job_state(record.native_id, "JOB_STATE_RUNNING")
        if behaviour == "succeed":
            fake.vertex.add_log(record.native_id, LOG_LINE)
            fake.vertex.set_job_state(record.native_id, "JOB_STATE_SUCCEEDED")
        elif behaviour == "fail":
            fake.vertex.add_log(record.native_id, "Traceback: exit 3")
            fake.vertex.set_job_state(
                record.native_id,
                "JOB_STATE_FAILED",
                "The replica workerpool0-0 exited with a non-zero status of 3. "
                "To find out more about why your job exited please check the logs",
            )
        return self.wait_for(provider, record.id, timeout=30)

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        data = self.make_job(tmp_path, "succeed").model_dump()
        return TrainingJob.model_validate({**data, "nodes": {"min": 1, "max": 4}})

    def received(self, provider: Provider, plan: Plan[TrainingJob], record: JobRecord) -> Sent:
        return list(fake_of(provider).vertex.received)


def fake_of(provider: Provider) -> FakeVertex:
    """The fake server the conftest's ``provider`` fixture talks to."""
    fake = getattr(provider, "fake", None)
    assert isinstance(fake, FakeVertex), "the provider fixture carries its fake"
    return fake
