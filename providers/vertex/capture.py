"""Vertex AI's native request capture: the Endpoint's request-response logging to BigQuery.

The plan sets ``predictRequestResponseLoggingConfig`` on the Endpoint (CreateEndpoint; an
existing endpoint gets UpdateEndpoint with that update mask) with the deployment's sampling rate
and the table ``bq://<project>.mlcloud_capture.<endpoint, - as _>``. Vertex writes one row a
request (documented schema): ``endpoint``, ``deployed_model_id``, ``logging_time`` (TIMESTAMP),
``request_id`` (NUMERIC), ``request_payload`` and ``response_payload`` (REPEATED STRING, the
request's and answer's JSON).

``read`` queries that table with google-cloud-bigquery; with ``MLCLOUD_VERTEX_CAPTURE_EXPORT``
set (a file or directory of the table exported as newline-delimited JSON, ``bq extract
--destination_format NEWLINE_DELIMITED_JSON``, where a TIMESTAMP reads "2026-11-30 08:00:00.123
UTC" and a NUMERIC is a string) it reads the export instead: offline analysis, and the tests,
which have no BigQuery to query.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.provider import CapturedRecords

if TYPE_CHECKING:
    from mlcloud.records import EndpointRecord
    from mlcloud.specs import Deployment
    from providers.vertex.provider import VertexProvider
    from providers.vertex.settings import VertexSettings

DATASET = "mlcloud_capture"
ENV_EXPORT = "MLCLOUD_VERTEX_CAPTURE_EXPORT"
UPDATE_MASK = "predictRequestResponseLoggingConfig"
MAX_ROWS = 5_000_000


def table(settings: VertexSettings, endpoint: str) -> str:
    """``project.dataset.table`` of the endpoint's request-response log."""
    return f"{settings.project}.{DATASET}.{endpoint.replace('-', '_')}"


def logging_config(d: Deployment, settings: VertexSettings) -> dict[str, Any] | None:
    """The Endpoint's ``predictRequestResponseLoggingConfig`` (None: capture off)."""
    if d.capture is None:
        return None
    return {
        "enabled": True,
        "samplingRate": d.capture.sample,
        "bigqueryDestination": {"outputUri": f"bq://{table(settings, d.name)}"},
    }


def changed(spec: Mapping[str, Any] | None, d: Deployment) -> bool:
    """Whether ``d`` captures otherwise than the endpoint's recorded deployment ``spec``."""
    return (spec or {}).get("capture") != (d.capture.model_dump() if d.capture else None)


def update_step(d: Deployment, endpoint: str, settings: VertexSettings) -> dict[str, Any]:
    """UpdateEndpoint turning the log on (or off) on an endpoint that exists."""
    config = logging_config(d, settings) or {"enabled": False}
    return {"endpoint": {"name": endpoint, UPDATE_MASK: config}, "updateMask": UPDATE_MASK}


def read(
    provider: VertexProvider, record: EndpointRecord, since: float, until: float
) -> CapturedRecords:
    export = os.environ.get(ENV_EXPORT)
    rows = _export_rows(Path(export)) if export else _query(provider, record, since, until)
    records = [r for r in (parse_row(row) for row in rows) if r and since <= r["ts"] < until]
    records.sort(key=lambda r: r["ts"])
    return CapturedRecords(records)


def _export_rows(path: Path) -> Iterable[Mapping[str, Any]]:
    files = sorted(path.glob("*.json*")) if path.is_dir() else [path]
    for file in files:
        with file.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def _query(
    provider: VertexProvider, record: EndpointRecord, since: float, until: float
) -> Iterable[Mapping[str, Any]]:
    """The window's rows from BigQuery (google-cloud-bigquery, installed with aiplatform)."""
    from google.cloud import bigquery

    client = bigquery.Client(project=provider.settings.project)
    # the table name: a validated project id and endpoint name; the window: query parameters
    sql = (
        "SELECT deployed_model_id, logging_time, CAST(request_id AS STRING) AS request_id, "  # noqa: S608
        f"request_payload, response_payload FROM `{table(provider.settings, record.name)}` "
        "WHERE logging_time >= @since AND logging_time < @until ORDER BY logging_time "
        f"LIMIT {MAX_ROWS}"
    )
    params = [
        bigquery.ScalarQueryParameter("since", "TIMESTAMP", datetime.fromtimestamp(since, UTC)),
        bigquery.ScalarQueryParameter("until", "TIMESTAMP", datetime.fromtimestamp(until, UTC)),
    ]
    job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params))
    return (dict(row.items()) for row in job.result())


def parse_row(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """One logged request (a BigQuery row or its JSON export) → the providers' record shape."""
    when = _time(row.get("logging_time"))
    if when is None:
        return None
    instances: list[Any] = []
    predictions: list[Any] = []
    for payload in row.get("request_payload") or []:
        instances.extend(_field(payload, "instances"))
    for payload in row.get("response_payload") or []:
        predictions.extend(_field(payload, "predictions"))
    return {
        "ts": when,
        "request_id": str(row.get("request_id") or ""),
        "version": str(row.get("deployed_model_id") or ""),
        "instances": instances,
        "predictions": predictions,
    }


def _field(payload: Any, name: str) -> list[Any]:
    try:
        data = json.loads(payload) if isinstance(payload, str) else payload
    except ValueError:
        return []
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def _time(value: Any) -> float | None:
    """A TIMESTAMP as the client returns it (datetime) or as an export writes it."""
    if isinstance(value, datetime):
        return value.timestamp()
    if not isinstance(value, str):
        return None
    text = value.strip().removesuffix(" UTC").replace(" ", "T").replace("Z", "")
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
