"""The traffic details every endpoint record carries, kept the same way on every provider.

``details["traffic"]`` (version id → percent now in force), ``details["versions"]`` (version id →
{"model", "sha256"}) and ``details["newest"]`` (the version the last deploy made). A provider
reads the split from its cloud and calls :func:`record_split`; the rest follows from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlcloud.records import EndpointRecord


def percentages(weights: Mapping[str, float]) -> dict[str, int]:
    """Relative weights (SageMaker's) as whole percents adding up to 100 (all 0 if none)."""
    total = sum(weights.values())
    if total <= 0:
        return dict.fromkeys(weights, 0)
    shares = {k: int(100 * w // total) for k, w in weights.items()}
    # the rounding remainder goes to the largest weights, so the sum is exactly 100
    for key in sorted(weights, key=lambda k: -weights[k])[: 100 - sum(shares.values())]:
        shares[key] += 1
    return shares


def version_of(record: EndpointRecord | None) -> dict[str, Any]:
    """What a record says its served model is (for a version made before versions were kept)."""
    if record is None:
        return {"model": None, "sha256": None}
    return {"model": record.model, "sha256": record.model_sha256}


def record_split(
    record: EndpointRecord,
    traffic: Mapping[str, int],
    versions: Mapping[str, Mapping[str, Any]],
    newest: str | None = None,
) -> EndpointRecord:
    """Put the split in force on ``record``: versions pruned to those serving, ``newest`` set
    (kept when not given: the version the last deploy made, even once retired) and the
    record's model the newest version's while it serves, else the largest share's."""
    # a version mlcloud kept no note of: the record's own model when it is the only one
    unknown = version_of(record if len(traffic) == 1 else None)
    kept = {v: dict(versions.get(v) or unknown) for v in traffic}
    newest = newest or record.details.get("newest")
    record.details.update({"traffic": dict(traffic), "versions": kept, "newest": newest})
    main = newest if newest in kept else max(kept, key=lambda v: (traffic[v], v), default=None)
    if main is not None and kept[main].get("model"):
        record.model = kept[main]["model"]
        record.model_sha256 = kept[main].get("sha256")
    return record
