"""VM size for serverless jobs, from the checked-in Azure VM catalog (``catalog.csv``).

On a named compute cluster the VM size is the cluster's, so nothing is picked; on serverless
compute Azure ML needs ``resources.instance_type``, chosen here as the smallest catalog row that
fits the job's cpus / memory / GPUs
at the lowest list price (``resources.instance_type.azureml`` wins).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud.errors import UnsupportedFeature

if TYPE_CHECKING:
    from mlcloud.specs import Resources
    from providers.common.catalog import InstanceType

CATALOG = Path(__file__).with_name("catalog.csv")
GPU_TYPES = ("T4", "V100", "A10", "A100", "A100-80GB", "H100")


@functools.cache
def catalog() -> list[InstanceType]:
    from providers.common.catalog import load_catalog

    return load_catalog(CATALOG)


def explicit(resources: Resources, default: str | None) -> str | None:
    return resources.instance_type.get("azureml") or default


def pick(resources: Resources, where: str, default: str | None = None) -> str:
    """The VM size for one node: the override, else the best-fitting catalog row."""
    from providers.common.catalog import fit

    chosen = explicit(resources, None)
    if chosen:
        return chosen
    gpus = resources.accelerator_count
    gpu_type = resources.accelerator_type
    if gpus and gpu_type and gpu_type not in GPU_TYPES:
        raise UnsupportedFeature(
            f"accelerator type {gpu_type!r}", where, hint="one of: " + ", ".join(GPU_TYPES)
        )
    if not gpus and resources.cpus is None and resources.memory is None and default:
        return default
    row = fit(
        catalog(),
        resources,
        where,
        hint="no Azure VM size in the catalog fits; set resources.instance_type.azureml",
    )
    return row.name
