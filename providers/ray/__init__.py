"""Ray: TrainingJobs through a Ray cluster's Jobs API, distributed ones as torchrun agents
placed on the cluster's nodes by Ray.

Importing this package is cheap: the provider class loads on first use and Ray only inside the
modules that talk to the cluster (``clients.py``), so planning (``mlcloud train --dry-run``)
never imports it. Without an ``address`` in the profile, mlcloud starts a single-machine cluster
on first use, secure by default (``cluster.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.ray.provider import RayProvider

__all__ = ["RayProvider"]


def __getattr__(name: str) -> Any:
    if name == "RayProvider":
        from providers.ray.provider import RayProvider

        return RayProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
