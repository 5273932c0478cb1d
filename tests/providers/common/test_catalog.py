"""Loading an instance catalog and picking the cheapest type that fits."""

from __future__ import annotations

from pathlib import Path

import pytest

from providers.common.catalog import InstanceType, load_catalog, pick_instance

GIB = 1024**3
CSV = """\
name,cpus,memory_gib,gpus,gpu_type,price_per_hour
ml.m5.large,2,8,0,,0.115
ml.m5.xlarge,4,16,0,,0.23
ml.c5.xlarge,4,8,0,,0.204
ml.g4dn.xlarge,4,16,1,T4,0.736
ml.g4dn.12xlarge,48,192,4,T4,4.89
ml.p3.2xlarge,8,61,1,V100,3.825
ml.g5.xlarge,4,16,1,A10G,1.408
"""


@pytest.fixture
def catalog(tmp_path: Path) -> list[InstanceType]:
    path = tmp_path / "catalog.csv"
    path.write_text(CSV)
    return load_catalog(path)


def test_load(catalog: list[InstanceType]) -> None:
    assert len(catalog) == 7
    assert catalog[0] == InstanceType("ml.m5.large", 2.0, 8.0, 0, None, 0.115)
    assert catalog[3].gpu_type == "T4" and catalog[3].gpus == 1


def test_pick_cheapest_that_fits(catalog: list[InstanceType]) -> None:
    def pick(**kw: object) -> str | None:
        args: dict[str, object] = {"cpus": None, "memory_bytes": None, "gpus": 0, "gpu_type": None}
        args.update(kw)
        found = pick_instance(catalog, **args)  # type: ignore[arg-type]
        return found.name if found else None

    assert pick() == "ml.m5.large"
    assert pick(cpus=4) == "ml.c5.xlarge"
    assert pick(cpus=4, memory_bytes=12 * GIB) == "ml.m5.xlarge"
    assert pick(gpus=1, gpu_type="t4") == "ml.g4dn.xlarge"  # case-insensitive
    assert pick(gpus=1) == "ml.g4dn.xlarge"
    assert pick(gpus=1, gpu_type="V100") == "ml.p3.2xlarge"
    assert pick(gpus=2, gpu_type="T4") == "ml.g4dn.12xlarge"
    assert pick(gpus=1, gpu_type="H100") is None
    assert pick(cpus=64) is None
    assert pick_instance([], cpus=None, memory_bytes=None, gpus=0, gpu_type=None) is None


def test_bad_catalog(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("name,cpus\nx,1\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_catalog(path)
    path.write_text(CSV.splitlines()[0] + "\nx,lots,1,0,,1\n")
    with pytest.raises(ValueError, match=":2: bad catalog row"):
        load_catalog(path)
