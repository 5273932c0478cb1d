"""Machine type and accelerator for a job, from the checked-in Vertex catalog (``catalog.csv``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud.errors import UnsupportedFeature

if TYPE_CHECKING:
    from mlcloud.specs import Resources
    from providers.common.catalog import InstanceType
    from providers.vertex.protojson import MachineSpec

CATALOG = Path(__file__).with_name("catalog.csv")
# mlcloud GPU names (resources.accelerators "T4:1") -> Vertex AcceleratorType enum names
ACCELERATORS = {
    "T4": "NVIDIA_TESLA_T4",
    "V100": "NVIDIA_TESLA_V100",
    "P100": "NVIDIA_TESLA_P100",
    "P4": "NVIDIA_TESLA_P4",
    "A100": "NVIDIA_TESLA_A100",
    "A100-80GB": "NVIDIA_A100_80GB",
    "L4": "NVIDIA_L4",
    "H100": "NVIDIA_H100_80GB",
    "H200": "NVIDIA_H200_141GB",
    "B200": "NVIDIA_B200",
}


@dataclass(frozen=True)
class Machine:
    machine_type: str
    accelerator_type: str | None  # Vertex enum name
    accelerator_count: int

    def spec(self) -> MachineSpec:
        """proto-JSON of aiplatform_v1.MachineSpec."""
        out: MachineSpec = {"machineType": self.machine_type}
        if self.accelerator_type and self.accelerator_count:
            out["acceleratorType"] = self.accelerator_type
            out["acceleratorCount"] = self.accelerator_count
        return out


@functools.cache
def catalog() -> list[InstanceType]:
    from providers.common.catalog import load_catalog

    return load_catalog(CATALOG)


def _vertex_accelerator(gpu_type: str | None, where: str) -> str:
    name = (gpu_type or "T4").upper()
    if name in ACCELERATORS.values():
        return name
    if name not in ACCELERATORS:
        raise UnsupportedFeature(
            f"accelerator type {gpu_type!r}",
            where,
            hint="one of: " + ", ".join(ACCELERATORS),
        )
    return ACCELERATORS[name]


def pick(resources: Resources, where: str) -> Machine:
    """``resources.instance_type.vertex`` wins; otherwise the catalog's best fit."""
    from providers.common.catalog import fit

    gpus = resources.accelerator_count
    explicit = resources.instance_type.get("vertex")
    if explicit:
        if gpus:
            return Machine(explicit, _vertex_accelerator(resources.accelerator_type, where), gpus)
        # a2/g2/a3 types carry their GPUs; Vertex still wants them named in the MachineSpec
        built_in = [i for i in catalog() if i.name == explicit and i.gpus]
        if built_in and not any(i.name == explicit and not i.gpus for i in catalog()):
            first = built_in[0]
            return Machine(explicit, _vertex_accelerator(first.gpu_type, where), first.gpus)
        return Machine(explicit, None, 0)
    gpu_type = resources.accelerator_type
    if gpus:
        _vertex_accelerator(gpu_type, where)  # a clear error for an unknown GPU name
    row = fit(
        catalog(),
        resources,
        where,
        hint="no machine in providers/vertex/catalog.csv fits: "
        "set resources.instance_type.vertex to a Vertex machine type",
    )
    if row.gpus:
        return Machine(row.name, _vertex_accelerator(row.gpu_type, where), row.gpus)
    return Machine(row.name, None, 0)
