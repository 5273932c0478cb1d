"""User YAML is untrusted: alias bombs and endless files are refused quickly and clearly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlcloud.errors import ConfigError, SpecError
from mlcloud.specs import load_job
from mlcloud.yamlio import apply_overrides, read_yaml

BOMB = "\n".join(
    ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)


def test_alias_bomb_in_hyperparameters_is_refused_fast(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    body = "\n".join("  " + line for line in BOMB.splitlines())
    job.write_text(f"name: bomb\ncommand: [python, x.py]\nhyperparameters:\n{body}\n")
    started = time.monotonic()
    with pytest.raises(SpecError, match="aliases") as err:
        load_job(job)
    assert time.monotonic() - started < 2.0
    assert err.value.hint and "alias" in err.value.hint


def test_alias_bomb_through_set_is_refused() -> None:
    value = "[" + ", ".join(["x"] * 9) + "]"
    bomb = f"&a {value}"  # one anchor is harmless; any alias is refused
    assert apply_overrides({}, [f"hyperparameters.x={bomb}"])["hyperparameters"]["x"]
    with pytest.raises(SpecError, match="aliases"):
        apply_overrides({}, ["hyperparameters.x=[&a [1, 2], *a, *a]"])


def test_config_file_with_alias_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "mlcloud.yaml"
    path.write_text("base: &b {type: local}\nprofiles: {x: *b}\n")
    with pytest.raises(ConfigError, match="aliases"):
        read_yaml(path, what="config file", error=ConfigError)


def test_endless_file_is_refused_by_size_before_reading() -> None:
    started = time.monotonic()
    with pytest.raises(SpecError, match="larger than"):
        read_yaml(Path("/dev/zero"), what="job file")
    assert time.monotonic() - started < 2.0


def test_plain_yaml_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\nlist: [1, 2]\nnested: {a: b}\n")
    assert read_yaml(path, what="job file") == {"name": "ok", "list": [1, 2], "nested": {"a": "b"}}
