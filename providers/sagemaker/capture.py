"""SageMaker's native request capture: the EndpointConfig's ``DataCaptureConfig``, read back.

SageMaker writes what it captures to ``{DestinationS3Uri}/{endpoint}/{variant}/yyyy/mm/dd/hh/
<name>.jsonl``, one JSON object a request (documented in "Capture data from real-time
endpoint" / "View collected data")::

    {"captureData": {"endpointInput": {"observedContentType": "application/json",
       "mode": "INPUT", "data": "...", "encoding": "JSON"},
     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
       "data": "...", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceId": "<caller's id>",
       "inferenceTime": "2026-11-30T08:00:00Z"},
     "eventVersion": "0"}

``encoding`` is JSON or CSV for the content types listed in ``CaptureContentTypeHeader``,
BASE64 otherwise. The variant is the version id (``details["traffic"]`` names variants).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mlcloud.provider import CapturedRecords

if TYPE_CHECKING:
    from mlcloud.records import EndpointRecord
    from mlcloud.specs import Deployment
    from providers.sagemaker.provider import SageMakerProvider
    from providers.sagemaker.settings import SageMakerSettings

JSON_TYPES = ["application/json"]
CSV_TYPES = ["text/csv"]
MAX_OBJECTS = 100_000


def destination(settings: SageMakerSettings) -> str:
    return settings.s3_uri("capture")


def data_capture_config(dep: Deployment, settings: SageMakerSettings) -> dict[str, Any] | None:
    """The EndpointConfig's ``DataCaptureConfig`` for ``dep.capture`` (None: capture off)."""
    if dep.capture is None:
        return None
    return {
        "EnableCapture": True,
        # SageMaker samples in whole percents; a rate under 1 % still captures 1 %
        "InitialSamplingPercentage": max(1, round(dep.capture.sample * 100)),
        "DestinationS3Uri": destination(settings),
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": JSON_TYPES, "CsvContentTypes": CSV_TYPES},
    }


def read(
    provider: SageMakerProvider, record: EndpointRecord, since: float, until: float
) -> CapturedRecords:
    """Every captured request of ``record`` in the window, from the hour folders it spans."""
    s3 = provider.clients.s3
    uri = destination(provider.settings)
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    base = f"{prefix}/{record.name}/"
    records: list[dict[str, Any]] = []
    for key in _keys(s3, bucket, base, since, until):
        variant = key[len(base) :].split("/", 1)[0]
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
        for line in body.splitlines():
            rec = parse_line(line, variant) if line.strip() else None
            if rec is not None and since <= rec["ts"] < until:
                records.append(rec)
    records.sort(key=lambda r: r["ts"])
    return CapturedRecords(records)


def _keys(s3: Any, bucket: str, base: str, since: float, until: float) -> list[str]:
    """The capture objects under ``base`` whose hour folder overlaps the window."""
    first = datetime.fromtimestamp(since, UTC).replace(minute=0, second=0, microsecond=0)
    last = datetime.fromtimestamp(until, UTC)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            hour = _hour(obj["Key"][len(base) :])
            if hour is not None and first <= hour <= last:
                keys.append(obj["Key"])
        if len(keys) > MAX_OBJECTS:
            break
    return keys


def _hour(rest: str) -> datetime | None:
    """``variant/yyyy/mm/dd/hh/name.jsonl`` → that hour (UTC)."""
    parts = rest.split("/")
    if len(parts) != 6 or not parts[5].endswith(".jsonl"):
        return None
    try:
        y, m, d, h = (int(p) for p in parts[1:5])
        return datetime(y, m, d, h, tzinfo=UTC)
    except ValueError:
        return None


def parse_line(line: str, variant: str) -> dict[str, Any] | None:
    """One SageMaker capture line → the providers' record shape (None: not a capture line)."""
    try:
        event = json.loads(line)
        data = event["captureData"]
        meta = event["eventMetadata"]
        when = datetime.fromisoformat(meta["inferenceTime"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    request = _decode(data.get("endpointInput"))
    answer = _decode(data.get("endpointOutput"))
    instances = request.get("instances") if isinstance(request, dict) else request
    predictions = answer.get("predictions") if isinstance(answer, dict) else answer
    if isinstance(predictions, list) and all(
        isinstance(p, list) and len(p) == 1 for p in predictions
    ):  # a CSV answer: one value a line
        predictions = [p[0] for p in predictions]
    return {
        "ts": when.timestamp(),
        "request_id": str(meta.get("inferenceId") or meta.get("eventId") or ""),
        "version": variant,
        "instances": instances if isinstance(instances, list) else [],
        "predictions": predictions if isinstance(predictions, list) else [],
    }


def _decode(part: dict[str, Any] | None) -> Any:
    if not part:
        return None
    raw = part.get("data", "")
    encoding = str(part.get("encoding", "")).upper()
    media = str(part.get("observedContentType", "")).split(";")[0].strip().lower()
    if encoding == "BASE64":
        raw = base64.b64decode(raw).decode("utf-8", "replace")
        encoding = "CSV" if media in CSV_TYPES else "JSON" if "json" in media else ""
    if encoding == "CSV":
        return [[_number(c) for c in row] for row in csv.reader(io.StringIO(raw)) if row]
    if encoding == "JSON":
        try:
            return json.loads(raw)
        except ValueError:  # JSON Lines: one instance a line
            return [json.loads(x) for x in raw.splitlines() if x.strip()]
    return None


def _number(cell: str) -> Any:
    try:
        return float(cell)
    except ValueError:
        return cell


def object_key(settings: SageMakerSettings, endpoint: str, variant: str, when: datetime) -> str:
    """Where SageMaker puts a capture file written at ``when`` (tests write fixtures there)."""
    _, _, prefix = destination(settings).removeprefix("s3://").partition("/")
    return f"{prefix}/{endpoint}/{variant}/{when:%Y/%m/%d/%H}/{when:%M-%S-%f}-capture.jsonl"
