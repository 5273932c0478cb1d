"""Vertex JobState names -> mlcloud JobState, and the exit code from a failure message."""

from __future__ import annotations

import re

from mlcloud.records import JobState

JOB_STATES = {
    "JOB_STATE_UNSPECIFIED": JobState.PENDING,
    "JOB_STATE_QUEUED": JobState.PENDING,
    "JOB_STATE_PENDING": JobState.PENDING,
    "JOB_STATE_PAUSED": JobState.PENDING,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,  # not stopped yet
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.CANCELLED,
}
# "The replica workerpool0-0 exited with a non-zero status of 3. ..."
_EXIT = re.compile(r"non-zero status of (\d+)")


def job_state(name: str) -> JobState:
    return JOB_STATES.get(name, JobState.PENDING)


def exit_code(message: str | None) -> int | None:
    match = _EXIT.search(message or "")
    return int(match.group(1)) if match else None
