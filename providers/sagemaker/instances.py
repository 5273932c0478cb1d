"""Resources → a SageMaker instance type, from the checked-in ``catalog.csv``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.specs import Resources

if TYPE_CHECKING:
    from providers.common.catalog import InstanceType

CATALOG = Path(__file__).with_name("catalog.csv")
DEFAULT_TYPE = "ml.m5.large"


@functools.cache
def catalog() -> list[InstanceType]:
    from providers.common.catalog import load_catalog

    return load_catalog(CATALOG)


def gpus_of(instance_type: str) -> int:
    return next((int(i.gpus) for i in catalog() if i.name == instance_type), 0)


def pick(resources: Resources, where: str) -> str:
    """``resources.instance_type.sagemaker`` wins; else the cheapest catalog type that fits."""
    explicit = resources.instance_type.get("sagemaker")
    if explicit:
        if not explicit.startswith("ml."):
            raise UnsupportedFeature(
                f"instance type {explicit!r}", where, hint="SageMaker types start with 'ml.'"
            )
        known = [i for i in catalog() if i.name == explicit]
        if known and known[0].gpus < resources.accelerator_count:
            raise SpecError(
                f"resources.instance_type.sagemaker {explicit} has {known[0].gpus} GPU(s), "
                f"but resources.accelerators asks for {resources.accelerator_count}",
                hint="pick a GPU instance type, or drop one of the two",
            )
        return explicit
    if (
        resources.cpus is None
        and resources.memory_bytes is None
        and not resources.accelerator_count
    ):
        return DEFAULT_TYPE
    from providers.common.catalog import fit

    gpu_types = sorted({i.gpu_type for i in catalog() if i.gpu_type})
    found = fit(
        catalog(),
        resources,
        where,
        hint="no catalogued instance fits; set resources.instance_type.sagemaker "
        f"(GPU types known: {', '.join(gpu_types)})",
    )
    return str(found.name)
