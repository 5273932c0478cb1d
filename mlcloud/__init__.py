"""mlcloud: one training job and one model, on any machine or cloud.

The SDK is re-exported lazily so that ``import mlcloud`` (and the CLI's start-up) stays cheap:
nothing heavy is imported until a name is used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TrainingJob": "mlcloud.specs",
    "Deployment": "mlcloud.specs",
    "Resources": "mlcloud.specs",
    "NodeRange": "mlcloud.specs",
    "ReplicaRange": "mlcloud.specs",
    "load_job": "mlcloud.specs",
    "plan": "mlcloud.api",
    "submit": "mlcloud.api",
    "train": "mlcloud.api",
    "get_provider": "mlcloud.api",
    "job": "mlcloud.api",
    "Job": "mlcloud.api",
    "deploy": "mlcloud.api",
    "Endpoint": "mlcloud.api",
    "endpoint": "mlcloud.api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlcloud' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = ["__version__", *_LAZY]
