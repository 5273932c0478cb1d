"""SageMaker job/endpoint statuses → mlcloud states."""

from __future__ import annotations

import re
from typing import TypedDict

from mlcloud.records import EndpointState, JobState

_PENDING_SECONDARY = {
    "Starting",
    "Pending",
    "LaunchingMLInstances",
    "PreparingTrainingStack",
    "Downloading",
    "DownloadingTrainingImage",
}
# Spot reclaims show as Interrupted; a RetryStrategy attempt shows as Restarting.
_RESTARTING_SECONDARY = {"Interrupted", "Restarting"}
_EXIT_CODE = re.compile(r"exit (?:code|status)[:= ]*(-?\d+)|ExitCode[:= ]*(-?\d+)", re.IGNORECASE)


class StatusTransition(TypedDict, total=False):
    Status: str
    StatusMessage: str


class ModelArtifacts(TypedDict, total=False):
    S3ModelArtifacts: str


class TrainingJobDescription(TypedDict, total=False):
    """The fields of ``DescribeTrainingJob`` mlcloud reads."""

    TrainingJobName: str
    TrainingJobArn: str
    TrainingJobStatus: str
    SecondaryStatus: str
    FailureReason: str
    ModelArtifacts: ModelArtifacts
    SecondaryStatusTransitions: list[StatusTransition]
    BillableTimeInSeconds: int


def job_state(desc: TrainingJobDescription) -> JobState:
    status = desc.get("TrainingJobStatus")
    secondary = desc.get("SecondaryStatus", "")
    if status == "Completed":
        return JobState.SUCCEEDED
    if status == "Failed":
        return JobState.FAILED
    if status in ("Stopping", "Stopped"):
        # SageMaker stops a job itself when a time limit hits: that is a failure, not a cancel.
        if secondary in ("MaxRuntimeExceeded", "MaxWaitTimeExceeded"):
            return JobState.FAILED
        return JobState.CANCELLED
    if secondary in _RESTARTING_SECONDARY:
        return JobState.RESTARTING
    if secondary in _PENDING_SECONDARY:
        return JobState.PENDING
    return JobState.RUNNING


def job_message(desc: TrainingJobDescription) -> str | None:
    secondary = desc.get("SecondaryStatus")
    reason = desc.get("FailureReason")
    if secondary in ("MaxRuntimeExceeded", "MaxWaitTimeExceeded"):
        return f"{secondary}: the job hit max_runtime" + (f" ({reason})" if reason else "")
    if reason:
        return str(reason)
    transitions = desc.get("SecondaryStatusTransitions") or []
    if transitions and transitions[-1].get("StatusMessage"):
        return f"{secondary}: {transitions[-1]['StatusMessage']}"
    return str(secondary) if secondary else None


def exit_code(desc: TrainingJobDescription) -> int | None:
    """The user process's exit code when SageMaker's FailureReason states it."""
    state = job_state(desc)
    if state is JobState.SUCCEEDED:
        return 0
    m = _EXIT_CODE.search(desc.get("FailureReason") or "")
    if m:
        return int(m.group(1) or m.group(2))
    return None


def endpoint_state(status: str | None) -> EndpointState:
    return {
        "Creating": EndpointState.CREATING,
        "Updating": EndpointState.UPDATING,
        "SystemUpdating": EndpointState.UPDATING,
        "RollingBack": EndpointState.UPDATING,
        "InService": EndpointState.READY,
        "Deleting": EndpointState.DELETED,
        "Failed": EndpointState.FAILED,
        "OutOfService": EndpointState.FAILED,
        "UpdateRollbackFailed": EndpointState.FAILED,
    }.get(status or "", EndpointState.FAILED)
