"""Training jobs: submit (idempotent by native name), status, CloudWatch logs, cancel."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFound, Transient
from mlcloud.provider import JobRecord, JobState, Plan
from providers.sagemaker import s3, states
from providers.sagemaker.errors import map_error

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider

LOG_GROUP = "/aws/sagemaker/TrainingJobs"


class Jobs:
    def __init__(self, provider: SageMakerProvider) -> None:
        self.p = provider

    # ---- submit ------------------------------------------------------------------------------
    def submit(self, plan: Plan) -> JobRecord:
        ctx = plan.context
        request = copy.deepcopy(dict(plan.steps[0].request))
        name = request["TrainingJobName"]
        archive = ctx["archive"]
        sent = s3.put_if_missing(
            self.p.clients.s3, ctx["code_bucket"], ctx["code_key"], archive.data, "application/gzip"
        )
        for item in ctx["uploads"]:
            sent += s3.upload_tree_if_missing(
                self.p.clients.s3, item.bucket, item.key_prefix, item.files
            )
        arn, adopted = self._create(request)
        if adopted:
            existing = self._stored_by_native(name)
            if existing is not None:
                return self.status(existing.id)
        job_id = plan.id
        if adopted:
            job_id = self._tagged_job_id(arn) or job_id
        record = JobRecord(
            id=job_id,
            name=plan.spec.name,
            provider=self.p.name,
            type=self.p.type,
            state=JobState.PENDING,
            native_id=name,
            outputs={"logs": f"cloudwatch:{LOG_GROUP}/{name}"},
            details={
                "arn": arn,
                "region": ctx["region"],
                "code_uri": f"s3://{ctx['code_bucket']}/{ctx['code_key']}",
                "uploaded_bytes": sent,
                "adopted": adopted,
            },
            spec=plan.spec.model_dump(mode="json"),
        )
        self.p.store.add_job(record)
        return self.status(job_id)

    def _create(self, request: dict[str, Any]) -> tuple[str, bool]:
        """CreateTrainingJob; returns (arn, adopted). The native name is deterministic, so an
        existing job of that name *is* this submission: it is described and adopted, never
        duplicated. A create that failed with "already exists" or a lost answer (timeout,
        dropped connection, after botocore's own retries) is followed by a describe before
        the one further try."""
        sm = self.p.clients.sagemaker
        name = request["TrainingJobName"]
        existing = self._describe_or_none(name)
        if existing is not None:
            return existing["TrainingJobArn"], True
        for attempt in range(2):
            try:
                return sm.create_training_job(**request)["TrainingJobArn"], False
            except Exception as e:
                err = map_error(e)
                if not isinstance(err, (Conflict, Transient)):
                    raise err from e
                desc = self._describe_or_none(name)
                if desc is not None:
                    return desc["TrainingJobArn"], True
                if isinstance(err, Conflict) or attempt:
                    raise err from e
        raise AssertionError("unreachable")

    def _describe_or_none(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.p.clients.sagemaker.describe_training_job(TrainingJobName=name))
        except Exception as e:
            if isinstance(map_error(e), NotFound):
                return None
            raise

    def _stored_by_native(self, name: str) -> JobRecord | None:
        for job in self.p.store.list_jobs(provider=self.p.name, limit=10_000):
            if job.native_id == name:
                return job
        return None

    def _tagged_job_id(self, arn: str) -> str | None:
        tags = self.p.clients.sagemaker.list_tags(ResourceArn=arn).get("Tags", [])
        return next((t["Value"] for t in tags if t["Key"] == "mlcloud:job-id"), None)

    # ---- status ------------------------------------------------------------------------------
    def status(self, job_id: str) -> JobRecord:
        record = self.p.store.get_job(job_id)
        if record.state.terminal and (
            record.state is not JobState.SUCCEEDED or "model_dir" in record.outputs
        ):
            return record
        desc = self.p.clients.sagemaker.describe_training_job(TrainingJobName=record.native_id)
        return self._apply(record, desc)

    def _apply(self, record: JobRecord, desc: dict[str, Any]) -> JobRecord:
        state = states.job_state(desc)
        outputs: dict[str, str] = {}
        artifact = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
        if state is JobState.SUCCEEDED and artifact:
            outputs["model_dir"] = artifact
        transitions = desc.get("SecondaryStatusTransitions") or []
        restarts = sum(1 for t in transitions if t.get("Status") in ("Interrupted", "Restarting"))
        return self.p.store.update_job(
            record.id,
            state=state,
            exit_code=states.exit_code(desc),
            message=states.job_message(desc),
            attempts=1 + restarts,
            merge_outputs=outputs or None,
            merge_details={
                "status": desc.get("TrainingJobStatus"),
                "secondary_status": desc.get("SecondaryStatus"),
                "billable_seconds": desc.get("BillableTimeInSeconds"),
            },
        )

    # ---- logs --------------------------------------------------------------------------------
    def logs(self, job_id: str, follow: bool) -> Iterator[str]:
        record = self.p.store.get_job(job_id)
        native = record.native_id or ""
        tokens: dict[str, str] = {}
        finished = False
        while True:
            streams = self._streams(native)
            for stream in streams:
                prefix = f"[{stream.split('/', 1)[-1]}] " if len(streams) > 1 else ""
                for message in self._read_stream(stream, tokens):
                    yield prefix + message
            if not follow or finished:
                return
            finished = self.status(job_id).state.terminal  # one more pass drains the tail
            if not finished:
                time.sleep(self.p.settings.log_poll_seconds)

    def _streams(self, native: str) -> list[str]:
        logs = self.p.clients.logs
        names: list[str] = []
        kwargs: dict[str, Any] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": native + "/"}
        try:
            while True:
                page = logs.describe_log_streams(**kwargs)
                names += [s["logStreamName"] for s in page.get("logStreams", [])]
                if not page.get("nextToken"):
                    break
                kwargs["nextToken"] = page["nextToken"]
        except Exception as e:
            if isinstance(map_error(e), NotFound):  # no log group until the first job logs
                return []
            raise
        return sorted(names)

    def _read_stream(self, stream: str, tokens: dict[str, str]) -> Iterator[str]:
        logs = self.p.clients.logs
        for _ in range(10_000):  # bounded: each page is up to 10k events
            kwargs: dict[str, Any] = {
                "logGroupName": LOG_GROUP,
                "logStreamName": stream,
                "startFromHead": True,
            }
            if stream in tokens:
                kwargs["nextToken"] = tokens[stream]
            page = logs.get_log_events(**kwargs)
            for event in page.get("events", []):
                yield str(event.get("message", "")).rstrip("\n")
            token = page.get("nextForwardToken")
            if not token or token == tokens.get(stream):
                return
            tokens[stream] = token
            if not page.get("events"):
                return

    # ---- cancel ------------------------------------------------------------------------------
    def cancel(self, job_id: str) -> JobRecord:
        record = self.p.store.get_job(job_id)
        if record.state.terminal:
            return record
        sm = self.p.clients.sagemaker
        desc = sm.describe_training_job(TrainingJobName=record.native_id)
        if states.job_state(desc).terminal:
            return self._apply(record, desc)
        try:
            sm.stop_training_job(TrainingJobName=record.native_id)
        except Exception as e:
            err = map_error(e)
            # A job that finished between describe and stop: report what it became.
            desc = self._describe_or_none(record.native_id or "") or {}
            if desc and states.job_state(desc).terminal:
                return self._apply(record, desc)
            raise err from e
        return self.p.store.update_job(
            job_id, state=JobState.CANCELLED, event="StopTrainingJob sent", message="cancelled"
        )
