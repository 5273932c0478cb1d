"""An ``mlcloud-model.yaml`` read from cloud storage (for a re-deploy's input-signature check,
``Provider.read_model_manifest``): the file's bytes parsed, or the member streamed out of a
``model.tar.gz`` with bounded reads, never written to disk."""

from __future__ import annotations

from typing import IO, Any

from mlcloud.modeldir import MANIFEST
from providers.common import metrics

MAX_BYTES = 4 << 20  # a manifest lists files and a signature: far below this


def parse(data: bytes | None) -> dict[str, Any] | None:
    """The manifest as a dict; None when ``data`` is missing or is not an mlcloud manifest."""
    if data is None or len(data) > MAX_BYTES:
        return None
    import yaml  # a hand-edited manifest may be real YAML (the JSON mlcloud writes is YAML)

    try:
        loaded = yaml.safe_load(data)
    except yaml.YAMLError:
        return None
    return loaded if isinstance(loaded, dict) and "framework" in loaded else None


def from_tar(stream: IO[bytes]) -> dict[str, Any] | None:
    """The manifest at the top of a gzipped tar read as a stream (SageMaker's model.tar.gz);
    None when it is not there or the archive is unreadable (reading stops at the member, and
    at ``metrics.MAX_ARCHIVE_BYTES`` at most)."""
    try:
        return parse(metrics.read_from_tar(stream, MANIFEST))
    except metrics.MetricsFileError:
        return None
