"""Checked-in instance catalogs (one CSV per provider) and picking the cheapest type that fits."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlcloud.specs import Resources

COLUMNS = ("name", "cpus", "memory_gib", "gpus", "gpu_type", "price_per_hour")
GIB = 1024**3


@dataclass(frozen=True)
class InstanceType:
    name: str
    cpus: float
    memory_gib: float
    gpus: int
    gpu_type: str | None
    price_per_hour: float


def load_catalog(path: Path) -> list[InstanceType]:
    """Read ``name,cpus,memory_gib,gpus,gpu_type,price_per_hour`` rows (empty gpu_type = none)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: catalog is missing columns {', '.join(missing)}")
        out: list[InstanceType] = []
        for line, row in enumerate(reader, start=2):
            try:
                out.append(
                    InstanceType(
                        name=row["name"].strip(),
                        cpus=float(row["cpus"]),
                        memory_gib=float(row["memory_gib"]),
                        gpus=int(row["gpus"] or 0),
                        gpu_type=(row["gpu_type"] or "").strip() or None,
                        price_per_hour=float(row["price_per_hour"]),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line}: bad catalog row: {exc}") from None
    return out


def pick_instance(
    catalog: Iterable[InstanceType],
    *,
    cpus: float | None,
    memory_bytes: int | None,
    gpus: int,
    gpu_type: str | None,
) -> InstanceType | None:
    """The cheapest type with at least the asked cpus, memory and GPUs; None when none fits.

    Ties are broken by name so the choice (and the plan) is stable. With ``gpus == 0`` GPU types
    are still allowed, but a CPU type is cheaper and wins whenever one fits.
    """
    wanted_type = gpu_type.lower() if gpu_type else None
    fits = [
        it
        for it in catalog
        if (cpus is None or it.cpus >= cpus)
        and (memory_bytes is None or it.memory_gib * GIB >= memory_bytes)
        and it.gpus >= gpus
        and (gpus == 0 or wanted_type is None or (it.gpu_type or "").lower() == wanted_type)
    ]
    return min(fits, key=lambda it: (it.price_per_hour, it.name), default=None)


def fit(catalog: list[InstanceType], resources: Resources, where: str, hint: str) -> InstanceType:
    """The cheapest catalogued type for ``resources``, else ``UnsupportedFeature`` at plan time."""
    from mlcloud.errors import UnsupportedFeature

    found = pick_instance(
        catalog,
        cpus=resources.cpus,
        memory_bytes=resources.memory_bytes,
        gpus=resources.accelerator_count,
        gpu_type=resources.accelerator_type,
    )
    if found is None:
        asked = resources.model_dump(exclude_defaults=True, exclude={"instance_type"})
        raise UnsupportedFeature(f"resources {asked}", where, hint=hint)
    return found
