"""Training jobs: submit (idempotent by native name), status, CloudWatch logs, cancel.

Every function runs inside the provider's error mapping (the template methods of
``mlcloud.provider.Provider`` call them); where an outcome decides what happens next
(``NotFound``: not there yet; ``Conflict``: already exists) the SDK call is wrapped in
``provider.mapped()`` and the mlcloud class is caught.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from mlcloud.errors import Conflict, NotFound, ProviderError, Transient
from mlcloud.records import JobRecord, JobState, Plan
from mlcloud.runtime import METRICS_FILE
from mlcloud.specs import TrainingJob
from providers.common import metrics
from providers.common.waiting import follow_logs
from providers.sagemaker import s3, states
from providers.sagemaker.job_plan import JobContext
from providers.sagemaker.states import TrainingJobDescription

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
CODE_CONTENT_TYPE = "application/gzip"


# ---- submit ----------------------------------------------------------------------------------
def submit(provider: SageMakerProvider, plan: Plan[TrainingJob]) -> JobRecord:
    """Stage the code and inputs (content-addressed: never sent twice), then create the job, or
    adopt the one a previous submission of this plan already created."""
    ctx = plan.context_as(JobContext)
    request = copy.deepcopy(dict(plan.steps[0].request))
    sent = _stage(provider, ctx)
    arn, adopted = _create(provider, request)
    if adopted:
        existing = _stored_by_native(provider, ctx.native_name)
        if existing is not None:
            return provider.job_status(existing.id)
    job_id = (_tagged_job_id(provider, arn) if adopted else None) or plan.id
    record = JobRecord(
        id=job_id,
        name=plan.spec.name,
        provider=provider.name,
        type=provider.type,
        state=JobState.PENDING,
        native_id=ctx.native_name,
        outputs={"logs": f"cloudwatch:{LOG_GROUP}/{ctx.native_name}"},
        details={
            "arn": arn,
            "region": ctx.region,
            "code_uri": f"s3://{ctx.code_bucket}/{ctx.code_key}",
            "uploaded_bytes": sent,
            "adopted": adopted,
        },
        spec=plan.spec.model_dump(mode="json"),
    )
    provider.store.add_job(record)
    return provider.job_status(job_id)


def _stage(provider: SageMakerProvider, ctx: JobContext) -> int:
    """Upload what S3 does not have yet; return the bytes sent."""
    sent = s3.put_if_missing(
        provider, ctx.code_bucket, ctx.code_key, ctx.archive.data, CODE_CONTENT_TYPE
    )
    for item in ctx.uploads:
        sent += s3.upload_tree_if_missing(provider, item.bucket, item.key_prefix, item.files)
    return sent


def _create(provider: SageMakerProvider, request: Mapping[str, Any]) -> tuple[str, bool]:
    """CreateTrainingJob; returns (arn, adopted). The native name is deterministic, so an
    existing job of that name *is* this submission: it is described and adopted, never
    duplicated. A create that failed with "already exists" or a lost answer (timeout,
    dropped connection, after botocore's own retries) is followed by a describe before
    the one further try: this loop is the only retry mlcloud adds to CreateTrainingJob."""
    sm = provider.clients.sagemaker
    name = request["TrainingJobName"]
    existing = _describe_or_none(provider, name)
    if existing is not None:
        return existing["TrainingJobArn"], True
    for attempt in range(2):
        try:
            with provider.mapped():
                return str(sm.create_training_job(**request)["TrainingJobArn"]), False
        except (Conflict, Transient) as err:
            desc = _describe_or_none(provider, name)
            if desc is not None:
                return desc["TrainingJobArn"], True
            if isinstance(err, Conflict) or attempt:
                raise
    raise AssertionError("unreachable")


def _describe(provider: SageMakerProvider, name: str) -> TrainingJobDescription:
    desc: TrainingJobDescription = provider.clients.sagemaker.describe_training_job(
        TrainingJobName=name
    )
    return desc


def _describe_or_none(provider: SageMakerProvider, name: str) -> TrainingJobDescription | None:
    try:
        with provider.mapped():
            return _describe(provider, name)
    except NotFound:
        return None


def _stored_by_native(provider: SageMakerProvider, name: str) -> JobRecord | None:
    for job in provider.store.list_jobs(provider=provider.name, limit=10_000):
        if job.native_id == name:
            return job
    return None


def _tagged_job_id(provider: SageMakerProvider, arn: str) -> str | None:
    tags = provider.clients.sagemaker.list_tags(ResourceArn=arn).get("Tags", [])
    return next((str(t["Value"]) for t in tags if t["Key"] == "mlcloud:job-id"), None)


# ---- status ----------------------------------------------------------------------------------
def status(provider: SageMakerProvider, record: JobRecord) -> JobRecord:
    return _apply(provider, record, _describe(provider, record.native_id or ""))


def _apply(
    provider: SageMakerProvider, record: JobRecord, desc: TrainingJobDescription
) -> JobRecord:
    state = states.job_state(desc)
    outputs: dict[str, str] = {}
    artifact = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if state is JobState.SUCCEEDED and artifact:
        outputs["model_dir"] = artifact
    transitions = desc.get("SecondaryStatusTransitions") or []
    restarts = sum(1 for t in transitions if t.get("Status") in ("Interrupted", "Restarting"))
    # a stopping job's output is not uploaded yet: its metrics are not looked for
    ended = state.terminal and desc.get("TrainingJobStatus") != "Stopping"
    collected = _metrics(provider, desc) if ended and metrics.due(record) else None
    return provider.store.update_job(
        record.id,
        state=state,
        exit_code=states.exit_code(desc),
        message=states.job_message(desc),
        attempts=1 + restarts,
        merge_outputs={**outputs, **(collected.outputs if collected else {})} or None,
        merge_details={
            "status": desc.get("TrainingJobStatus"),
            "secondary_status": desc.get("SecondaryStatus"),
            "billable_seconds": desc.get("BillableTimeInSeconds"),
            **(collected.details if collected else {}),
        },
    )


def _metrics(provider: SageMakerProvider, desc: TrainingJobDescription) -> metrics.Collected:
    """metrics.json from ``output.tar.gz``, where SageMaker uploads /opt/ml/output/data (the
    job's MLCLOUD_OUTPUT_DIR) when the job ends; streamed, never written to disk."""
    output = cast(dict[str, Any], desc).get("OutputDataConfig") or {}
    base = str(output.get("S3OutputPath", "")).rstrip("/")
    uri = f"{base}/{desc['TrainingJobName']}/output/output.tar.gz"
    bucket, _, key = uri.removeprefix("s3://").partition("/")

    def read() -> bytes | None:
        with provider.mapped():
            body = provider.clients.s3.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                return metrics.read_from_tar(body)
            finally:
                body.close()

    return metrics.gather(f"{uri}#{METRICS_FILE}", read)


# ---- logs ------------------------------------------------------------------------------------
def logs(provider: SageMakerProvider, record: JobRecord, follow: bool) -> Iterator[str]:
    """Every host's CloudWatch stream (prefixed by host when there are several)."""
    native = record.native_id or ""
    tokens: dict[str, str] = {}

    def read_new() -> Iterator[str]:
        streams = _streams(provider, native)
        for stream in streams:
            prefix = f"[{stream.split('/', 1)[-1]}] " if len(streams) > 1 else ""
            for message in _read_stream(provider, stream, tokens):
                yield prefix + message

    def finished() -> bool:
        return provider.job_status(record.id).state.terminal

    return follow_logs(read_new, finished, follow=follow, poll=provider.settings.log_poll_seconds)


def _streams(provider: SageMakerProvider, native: str) -> list[str]:
    logs_client = provider.clients.logs
    names: list[str] = []
    kwargs: dict[str, str] = {"logGroupName": LOG_GROUP, "logStreamNamePrefix": native + "/"}
    try:
        with provider.mapped():
            while True:
                page = logs_client.describe_log_streams(**kwargs)
                names += [s["logStreamName"] for s in page.get("logStreams", [])]
                if not page.get("nextToken"):
                    break
                kwargs["nextToken"] = page["nextToken"]
    except NotFound:  # no log group until the first job logs
        return []
    return sorted(names)


def _read_stream(provider: SageMakerProvider, stream: str, tokens: dict[str, str]) -> Iterator[str]:
    logs_client = provider.clients.logs
    for _ in range(10_000):  # bounded: each page is up to 10k events
        kwargs: dict[str, str | bool] = {
            "logGroupName": LOG_GROUP,
            "logStreamName": stream,
            "startFromHead": True,
        }
        if stream in tokens:
            kwargs["nextToken"] = tokens[stream]
        page = logs_client.get_log_events(**kwargs)
        for event in page.get("events", []):
            yield str(event.get("message", "")).rstrip("\n")
        token = page.get("nextForwardToken")
        if not token or token == tokens.get(stream):
            return
        tokens[stream] = token
        if not page.get("events"):
            return


# ---- cancel ----------------------------------------------------------------------------------
def cancel(provider: SageMakerProvider, record: JobRecord) -> JobRecord:
    """StopTrainingJob for a job the base class just found unfinished."""
    try:
        with provider.mapped():
            provider.clients.sagemaker.stop_training_job(TrainingJobName=record.native_id)
    except ProviderError:
        # A job that finished between that status and this stop: report what it became.
        desc = _describe_or_none(provider, record.native_id or "")
        if desc and states.job_state(desc).terminal:
            return _apply(provider, record, desc)
        raise
    return provider.store.update_job(
        record.id, state=JobState.CANCELLED, event="StopTrainingJob sent", message="cancelled"
    )
