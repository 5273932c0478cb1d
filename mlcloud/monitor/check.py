"""One drift check of an endpoint: its captured window against its serving version's baseline
(what ``mlcloud monitor`` and the scheduled checks of :mod:`mlcloud.monitor.alerts` run)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from mlcloud.monitor import capture, drift, profile
from mlcloud.records import EndpointRecord
from mlcloud.store import Store

DEFAULT_WINDOW_S = 24 * 3600


def check_endpoint(
    name: str,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    baseline: str | None = None,
    config: drift.DriftConfig | None = None,
    provider: str | None = None,
    now: float | None = None,
    store: Store | None = None,
) -> drift.DriftResult:
    """Drift of endpoint ``name`` over the last ``window_s`` seconds. ``baseline``: a registry
    reference or model dir to compare with instead of the model the endpoint serves."""
    with Store.borrowed(store) as st:
        record = st.get_endpoint(name, provider)
        return check_record(record, st, window_s=window_s, baseline=baseline, config=config,
                            now=now)  # fmt: skip


def check_record(
    record: EndpointRecord,
    store: Store,
    *,
    window_s: float = DEFAULT_WINDOW_S,
    baseline: str | None = None,
    config: drift.DriftConfig | None = None,
    now: float | None = None,
) -> drift.DriftResult:
    until = time.time() if now is None else now
    since = until - window_s
    base = profile.for_endpoint(record, store, baseline)
    version, _ = profile.serving_model(record)
    window = capture.read_window(
        record, since, until, feature_names=base.feature_names, store=store
    )
    notes: list[str] = []
    if version is not None:
        window, note = only_version(window, version)
        notes += [note] if note else []
    if len(window) == 0:
        notes.append(f"no captured requests between {time.ctime(since)} and {time.ctime(until)}")
    result = drift.compare(base, window, since=since, until=until, config=config)
    result.endpoint, result.version = record.name, version
    result.notes[:0] = notes
    return result


def only_version(window: capture.CaptureWindow,
                 version: str) -> tuple[capture.CaptureWindow, str | None]:  # fmt: skip
    """The rows served by ``version`` (a canary's new model is compared with its own
    baseline); all rows when the capture does not say which version answered."""
    versions = np.asarray(window.versions, dtype=object)
    if versions.size == 0 or not any(versions):
        return window, None
    mask = versions == version
    kept = int(mask.sum())
    if kept == len(window):
        return window, None
    out = dataclasses.replace(
        window,
        features=window.features[mask],
        predictions=np.asarray(window.predictions)[mask],
        timestamps=window.timestamps[mask],
        request_ids=window.request_ids[mask],
        versions=versions[mask],
        labels=window.labels[mask] if len(window.labels) == len(mask) else window.labels,
    )
    return out, f"{kept:,} of {len(window):,} captured rows were served by version {version}"
