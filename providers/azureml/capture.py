"""Azure ML's native request capture: the online deployment's data collector, read back.

The plan gives the deployment ``data_collector`` with the ``request`` and ``response``
collections (payload logging: Azure records the HTTP bodies itself, no code in the serving
container) at the deployment's sampling rate. Azure writes them as JSON Lines blobs to the
workspace's default blob datastore::

    modelDataCollector/<endpoint>/<deployment>/<request|response>/yyyy/MM/dd/HH/<id>.jsonl

each line a CloudEvents record: ``{"specversion": "1.0", "id", "source", "type":
"azureml.inference.request", "datacontenttype": "application/json", "time":
"2026-11-30T08:00:00Z", "data": <the body>, "correlationid", "xrequestid", ...}``. A request and
its response share ``correlationid``; the deployment is the version id.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mlcloud.provider import CapturedRecords

if TYPE_CHECKING:
    from azure.ai.ml.entities import DataCollector

    from mlcloud.records import EndpointRecord
    from mlcloud.specs import Deployment
    from providers.azureml.provider import AzureMLProvider

DATASTORE = "workspaceblobstore"
ROOT = "modelDataCollector"
COLLECTIONS = ("request", "response")
MAX_BLOBS = 100_000


def data_collector(deployment: Deployment) -> DataCollector | None:
    """The deployment's ``data_collector`` for ``deployment.capture`` (None: capture off)."""
    if deployment.capture is None:
        return None
    import warnings

    from azure.ai.ml.entities import DataCollector, DeploymentCollection

    with warnings.catch_warnings():  # "experimental class": said once per process otherwise
        warnings.simplefilter("ignore")
        collections = {c: DeploymentCollection(enabled="true") for c in COLLECTIONS}
        return DataCollector(collections=collections, sampling_rate=deployment.capture.sample)


def read(
    provider: AzureMLProvider, record: EndpointRecord, since: float, until: float
) -> CapturedRecords:
    """Every captured request of ``record`` in the window, from the hour folders it spans."""
    container = provider.datastores.container(DATASTORE)  # where the collector writes
    base = f"{ROOT}/{record.name}/"
    requests: dict[str, dict[str, Any]] = {}
    answers: dict[str, Any] = {}
    for name in _blobs(container, base, since, until):
        deployment, collection = name[len(base) :].split("/")[:2]
        text = container.get_blob_client(name).download_blob().readall().decode("utf-8")
        for line in text.splitlines():
            event = _event(line)
            if event is None:
                continue
            key = str(event.get("correlationid") or event.get("xrequestid") or event.get("id"))
            if collection == "request":
                requests[key] = {**event, "_deployment": deployment}
            else:
                answers[key] = event.get("data")
    records = []
    for key, event in requests.items():
        ts = _time(event.get("time"))
        if ts is None or not since <= ts < until:
            continue
        body, answer = event.get("data"), answers.get(key)
        records.append(
            {
                "ts": ts,
                "request_id": str(event.get("xrequestid") or key),
                "version": event["_deployment"],
                "instances": _list(body, "instances"),
                "predictions": _list(answer, "predictions"),
            }
        )
    records.sort(key=lambda r: r["ts"])
    return CapturedRecords(records)


def _blobs(container: Any, base: str, since: float, until: float) -> list[str]:
    first = datetime.fromtimestamp(since, UTC).replace(minute=0, second=0, microsecond=0)
    last = datetime.fromtimestamp(until, UTC)
    names = []
    for blob in container.list_blobs(name_starts_with=base):
        parts = blob.name[len(base) :].split("/")
        if len(parts) != 7 or parts[1] not in COLLECTIONS or not parts[6].endswith(".jsonl"):
            continue
        try:
            y, m, d, h = (int(p) for p in parts[2:6])
            hour = datetime(y, m, d, h, tzinfo=UTC)
        except ValueError:
            continue
        if first <= hour <= last:
            names.append(blob.name)
        if len(names) > MAX_BLOBS:
            break
    return names


def _event(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _list(body: Any, field: str) -> list[Any]:
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return []
    value = body.get(field) if isinstance(body, dict) else body
    return value if isinstance(value, list) else []


def _time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def blob_name(endpoint: str, deployment: str, collection: str, when: datetime) -> str:
    """Where Azure writes a collection file at ``when`` (tests write fixtures there)."""
    return f"{ROOT}/{endpoint}/{deployment}/{collection}/{when:%Y/%m/%d/%H}/{when:%M%S%f}.jsonl"
