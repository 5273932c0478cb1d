"""Vertex AI: TrainingJobs as CustomJobs, Deployments as endpoints, through ``aiplatform_v1``.

Importing this package is cheap: the provider class (and its pydantic settings) load on first
use, the Google SDKs only inside the modules that call them (``google.cloud.aiplatform_v1``
alone costs over a second), and planning builds proto-JSON without them, so
``mlcloud train --dry-run`` never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.vertex.provider import VertexProvider

__all__ = ["VertexProvider"]


def __getattr__(name: str) -> Any:
    # Lazy: modules of this package (states, machines, the planners) are imported on their own
    # and should not pay for the provider's imports.
    if name == "VertexProvider":
        from providers.vertex.provider import VertexProvider

        return VertexProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
