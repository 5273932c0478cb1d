"""The SageMaker provider in the shared job conformance suite, against moto in server mode.

moto runs no containers, so ``settle`` plays SageMaker's part: it moves the training job to
Completed/Failed inside moto's in-process backend and writes the container's CloudWatch log
line, exactly where and how SageMaker would. ``received`` reads what the moto server itself
received (``far_end.FAR_END``, recorded in its WSGI application) and decodes each request body
with botocore's service model back into boto3 kwargs.
"""

from __future__ import annotations

from pathlib import Path

from mlcloud.provider import Provider
from mlcloud.records import JobRecord, Plan
from mlcloud.specs import TrainingJob, validate_spec
from tests.conformance.jobs import LOG_LINE, JobConformance, Sent
from tests.providers.sagemaker.conftest import seed_logs, set_job_status
from tests.providers.sagemaker.far_end import FAR_END

SCRIPTS = {
    "succeed": f"print({LOG_LINE!r})\n",
    "fail": "raise SystemExit(3)\n",
    "long": "import time\ntime.sleep(3600)\n",
}


class TestSageMakerConformance(JobConformance):
    def make_job(self, tmp_path: Path, behaviour: str) -> TrainingJob:
        src = tmp_path / "src"
        src.mkdir(exist_ok=True)
        # The test's own dir name keeps each test's job distinct in the session-wide moto.
        (src / "train.py").write_text(f"# {tmp_path.name}\n{SCRIPTS[behaviour]}")
        data = {"name": f"conf-{behaviour}", "source": str(src), "command": ["python", "train.py"]}
        return validate_spec(TrainingJob, data, "job")

    def settle(self, provider: Provider, record: JobRecord, behaviour: str) -> JobRecord:
        native = record.native_id or ""
        set_job_status(native, "InProgress", "Training")
        if behaviour == "succeed":
            seed_logs(native, [LOG_LINE])
            set_job_status(native, "Completed", "Completed")
        else:
            seed_logs(native, ["Traceback ...", "SystemExit: 3"])
            set_job_status(native, "Failed", "Failed", "AlgorithmError: , exit code: 3")
        return provider.job_status(record.id)

    def unsupported_job(self, tmp_path: Path) -> TrainingJob | None:
        job = self.make_job(tmp_path, "succeed")
        data = {**job.model_dump(mode="json"), "nodes": {"min": 1, "max": 4}}
        return validate_spec(TrainingJob, data, "job")  # elastic: SageMaker counts are fixed

    def received(self, provider: Provider, plan: Plan[TrainingJob], record: JobRecord) -> Sent:
        # Every write mlcloud's clients sent since the test began (the S3 staging aside):
        # a submit that sent another call, or this one with other fields, fails the test.
        return FAR_END.sent()
