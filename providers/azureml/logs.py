"""A job's log lines, read from its run's log files (what ``ml_client.jobs.stream`` prints).

``jobs.stream`` writes to a file handle and blocks until the job ends, so mlcloud reads the same
source itself: the run's details list its log files as SAS URLs, fetched through the MLClient's
own request pipeline (azure-core retries included). Only ``user_logs/`` (the user process's
stdout/stderr) is shown; with several files (one per node) each line is prefixed by its file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mlcloud.errors import NotFound

if TYPE_CHECKING:
    from providers.azureml import AzureMLProvider

USER_LOGS = "user_logs/"


def _log_files(provider: AzureMLProvider, native_id: str) -> dict[str, str]:
    from providers.azureml.errors import mapped

    with mapped():
        # No public azure-ai-ml call lists a run's log files; jobs.stream reads them here too.
        details = provider.client.jobs._runs_operations.get_run_details(native_id)
    files = dict(getattr(details, "log_files", None) or {})
    user = {k: v for k, v in files.items() if k.startswith(USER_LOGS)}
    return dict(sorted((user or files).items()))


def _fetch(provider: AzureMLProvider, url: str) -> str:
    from azure.ai.ml._utils.utils import download_text_from_url

    from providers.azureml.errors import mapped

    with mapped():
        return download_text_from_url(url, provider.client._requests_pipeline, timeout=60)


def _new_lines(
    provider: AzureMLProvider, native_id: str, seen: dict[tuple[str, str], int], final: bool
) -> Iterator[str]:
    """Lines not yet yielded for ``native_id``; ``seen`` keeps the offset per file.

    Unless ``final``, a partial last line waits for its newline (the file is still growing).
    """
    try:
        files = _log_files(provider, native_id)
    except NotFound:
        return
    for name, url in files.items():
        text = _fetch(provider, url)
        key = (native_id, name)
        start = seen.get(key, 0)
        complete = text if final else text[: text.rfind("\n") + 1]
        seen[key] = max(start, len(complete))
        for line in complete[start:].splitlines():
            yield f"[{name.removeprefix(USER_LOGS)}] {line}" if len(files) > 1 else line


def job_logs(provider: AzureMLProvider, job_id: str, follow: bool) -> Iterator[str]:
    from mlcloud.specs import TrainingJob

    record = provider.store.get_job(job_id)
    seen: dict[tuple[str, str], int] = {}
    attempts = [a["native_id"] for a in record.details.get("attempts", []) if a.get("native_id")]
    for index, native in enumerate(attempts or [record.native_id or job_id], start=1):
        if len(attempts) > 1:
            yield f"[mlcloud] attempt {index} ({native})"
        yield from _new_lines(provider, native, seen, final=not follow)
    if not follow:
        return
    job = TrainingJob.model_validate(record.spec)
    # Bounded: every attempt may run max_runtime, plus an hour of queueing.
    deadline = time.monotonic() + job.max_runtime_seconds * (job.max_restarts + 1) + 3600
    native = record.native_id
    while time.monotonic() < deadline:
        record = provider.job_status(job_id)
        if record.native_id != native and record.native_id:
            native = record.native_id
            yield f"[mlcloud] attempt {record.attempts} ({native})"
        yield from _new_lines(provider, native or job_id, seen, final=record.state.terminal)
        if record.state.terminal:
            return
        time.sleep(provider.poll_interval)
