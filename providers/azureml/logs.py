"""A job's log lines, read from its run's log files (what ``ml_client.jobs.stream`` prints).

``jobs.stream`` writes to a file handle and blocks until the job ends, so mlcloud reads the same
source itself: the run's details list its log files as SAS URLs, fetched through the MLClient's
own request pipeline (azure-core retries included). Only ``user_logs/`` (the user process's
stdout/stderr) is shown; with several files (one per node) each line is prefixed by its file,
and with several attempts each attempt's lines follow a ``[mlcloud] attempt n`` header.

Following is ``providers.common.waiting.follow_logs``; it refreshes the job with
``job_status`` (a read) and stops when the job has ended or when its failed attempt waits for
``advance_job`` to re-submit it: a log reader never re-submits anything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlcloud.errors import NotFound
from mlcloud.specs import TrainingJob
from providers.azureml.jobs import RESUBMIT_DUE, attempts
from providers.common.waiting import follow_logs

if TYPE_CHECKING:
    from mlcloud.records import JobRecord
    from providers.azureml.provider import AzureMLProvider

USER_LOGS = "user_logs/"
QUEUEING_SECONDS = 3600  # allowed per job on top of max_runtime per attempt while following


class _Reader:
    """Yields each pass's new lines of every attempt; keeps the offsets it has read."""

    def __init__(self, provider: AzureMLProvider, record: JobRecord, follow: bool) -> None:
        self.provider = provider
        self.record = record
        self.final = not follow  # unless final, a partial last line waits for its newline
        self.seen: dict[tuple[str, str], int] = {}
        self.started: set[str] = set()  # attempts whose lines have begun
        self.complete = 0  # leading attempts read to their end (a later attempt exists)
        job = TrainingJob.model_validate(record.spec)
        # A job that may restart heads each attempt from the first, so a reader that follows
        # attempt after attempt (mlcloud.api.Job.logs) sees one growing sequence of lines.
        self.headed = job.max_restarts > 0
        # Bounded: every attempt may run max_runtime, plus queueing.
        self.deadline = (
            time.monotonic() + job.max_runtime_seconds * (job.max_restarts + 1) + QUEUEING_SECONDS
        )

    def natives(self) -> list[str]:
        names = [a["native_id"] for a in attempts(self.record) if a.get("native_id")]
        return names or [self.record.native_id or self.record.id]

    def read_new(self) -> Iterator[str]:
        natives = self.natives()
        for index in range(self.complete, len(natives)):
            native = natives[index]
            last = index == len(natives) - 1
            if native not in self.started:
                self.started.add(native)
                if self.headed or len(natives) > 1:
                    yield f"[mlcloud] attempt {index + 1} ({native})"
            yield from self._new_lines(native, final=self.final or not last)
            if not last:
                self.complete = index + 1

    def finished(self) -> bool:
        self.record = self.provider.job_status(self.record.id)
        done = (
            self.record.state.terminal
            or bool(self.record.details.get(RESUBMIT_DUE))
            or time.monotonic() > self.deadline
        )
        self.final = self.final or done
        return done

    def _log_files(self, native_id: str) -> dict[str, str]:
        with self.provider.mapped():
            files = self.provider.clients.run_details(native_id).log_files
        user = {k: v for k, v in files.items() if k.startswith(USER_LOGS)}
        return dict(sorted((user or files).items()))

    def _new_lines(self, native_id: str, final: bool) -> Iterator[str]:
        """Lines of ``native_id`` not yet yielded (its run may not exist yet: none)."""
        try:
            files = self._log_files(native_id)
        except NotFound:
            return
        for name, url in files.items():
            with self.provider.mapped():
                text = self.provider.clients.download_text(url)
            key = (native_id, name)
            start = self.seen.get(key, 0)
            complete = text if final else text[: text.rfind("\n") + 1]
            self.seen[key] = max(start, len(complete))
            for line in complete[start:].splitlines():
                yield f"[{name.removeprefix(USER_LOGS)}] {line}" if len(files) > 1 else line


def job_logs(provider: AzureMLProvider, record: JobRecord, follow: bool) -> Iterator[str]:
    reader = _Reader(provider, record, follow)
    return follow_logs(reader.read_new, reader.finished, follow=follow, poll=provider.poll_interval)
