"""Experiment tracking: the params and metrics each job logged, and jobs side by side.

A job logs with ``runtime.log_params`` / ``runtime.log_metrics`` into ``metrics.json`` in its
output; when the job ends, its provider collects the file into the job record
(``providers/common/metrics.py``: ``details["tracking"]``). :func:`job_metrics` is the one
reader of what was collected (the registry records it with a model version; ``jobs compare``
shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlcloud.errors import SpecError

if TYPE_CHECKING:
    from mlcloud.records import JobRecord
    from mlcloud.store import Store

DETAILS_KEY = "tracking"  # providers.common.metrics.DETAILS_KEY (the core never imports providers)


def job_metrics(record: JobRecord) -> dict[str, Any]:
    """``{"params": {...}, "metrics": {name: last value}}`` of a finished job; empty mappings
    when it logged nothing, has not ended yet, or its file could not be read (see
    :func:`tracking_note`)."""
    tracking = record.details.get(DETAILS_KEY) or {}
    metrics = tracking.get("metrics") or {}
    return {
        "params": dict(tracking.get("params") or {}),
        "metrics": {name: m["value"] for name, m in metrics.items()},
    }


def tracking_note(record: JobRecord) -> str | None:
    """Why a job shows no metrics, when that is not simply "it logged none"."""
    tracking = record.details.get(DETAILS_KEY)
    if tracking is None:
        return None if record.state.terminal else f"{record.state}: collected when it ends"
    error = tracking.get("error")
    return str(error) if error else None


@dataclass
class Row:
    kind: str  # "param" or "metric"
    name: str
    values: list[Any]  # one per job, None where the job has no such value
    differs: bool


@dataclass
class Comparison:
    jobs: list[dict[str, Any]]  # id, name, provider, state, note
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"jobs": self.jobs, "rows": [asdict(r) for r in self.rows]}


def compare_jobs(job_ids: Sequence[str], store: Store | None = None) -> Comparison:
    """Params and final metrics of ``job_ids`` side by side; a row ``differs`` when the jobs do
    not all have the same value. Unfinished jobs are refreshed first (their provider is asked),
    so a job that just ended shows its metrics."""
    if len(job_ids) < 2:
        raise SpecError("compare needs at least two jobs", hint="mlcloud jobs compare JOB JOB...")
    if len(set(job_ids)) != len(job_ids):
        raise SpecError("a job is named twice", hint="name each job once")
    from mlcloud.store import Store

    with Store.borrowed(store) as db:
        records = [_refreshed(db, db.get_job(job_id)) for job_id in job_ids]
    found = [job_metrics(r) for r in records]
    table = Comparison(
        jobs=[
            {"id": r.id, "name": r.name, "provider": r.provider, "state": str(r.state),
             "note": tracking_note(r)}
            for r in records
        ]
    )  # fmt: skip
    for kind in ("params", "metrics"):
        names = sorted({name for f in found for name in f[kind]})
        for name in names:
            values = [f[kind].get(name) for f in found]
            differs = any(v != values[0] for v in values[1:])
            table.rows.append(Row(kind.removesuffix("s"), name, values, differs))
    return table


def _refreshed(store: Store, record: JobRecord) -> JobRecord:
    if record.state.terminal:
        return record
    from mlcloud import registry
    from mlcloud.config import load_config
    from mlcloud.errors import MlcloudError

    try:
        profile = registry.resolve_profile(load_config(), record.provider)
        return registry.get_provider(profile, store).job_status(record.id)
    except MlcloudError:  # a profile gone or a cloud unreachable: compare what is stored
        return record
