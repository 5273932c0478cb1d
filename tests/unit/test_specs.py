"""TrainingJob / Deployment validation: good files load, bad ones give one helpful SpecError."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlcloud.errors import SpecError
from mlcloud.specs import (
    Deployment,
    TrainingJob,
    dump_yaml,
    json_schema,
    load_job,
    spec_hash,
    validate_spec,
)
from mlcloud.units import format_duration, parse_duration, parse_size

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_examples_load_and_resolve_paths() -> None:
    iris = load_job(REPO / "examples/iris/job.yaml")
    assert iris.source == str(REPO / "examples/iris")
    assert iris.inputs["train"] == str(REPO / "examples/iris/data")
    assert iris.max_runtime_seconds == 1800
    ddp = load_job(REPO / "examples/ddp/job.yaml")
    assert ddp.distributed and ddp.max_nodes == 2 and ddp.spot
    assert ddp.resources.accelerator_type == "T4" and ddp.resources.accelerator_count == 1
    assert ddp.resources.memory_bytes == 16 * 1024**3


def test_yaml_round_trip() -> None:
    job = load_job(REPO / "examples/ddp/job.yaml")
    again = validate_spec(TrainingJob, yaml.safe_load(dump_yaml(job)), "job")
    assert again == job
    assert spec_hash(again) == spec_hash(job)


def test_python_construction_and_defaults() -> None:
    job = TrainingJob(name="x", command=["python", "t.py"], nodes={"min": 1, "max": 4})
    assert job.elastic and job.distributed and job.min_nodes == 1 and job.max_nodes == 4
    assert job.max_runtime_seconds == 24 * 3600
    with pytest.raises(ValueError):
        job.model_copy(update={}).__setattr__("name", "y")  # frozen


@pytest.mark.parametrize(
    ("text", "must_mention"),
    [
        ("name: Bad_Name\ncommand: [x]", ["name", "Bad_Name"]),
        ("name: ok\ncommand: []", ["command"]),
        ("name: ok\ncommand: [x]\nnodes: 0", ["nodes", "0"]),
        ("name: ok\ncommand: [x]\nnodes: {min: 3, max: 2}", ["max (2) must be >= min (3)"]),
        ("name: ok\ncommand: [x]\nresources: {memory: lots}", ["resources.memory", "4Gi"]),
        ("name: ok\ncommand: [x]\nresources: {accelerators: 'T4:x'}", ["T4:1"]),
        ("name: ok\ncommand: [x]\nmax_runtime: forever", ["max_runtime", "1h30m"]),
        ("name: ok\ncommand: [x]\ncolour: red", ["colour", "unknown field", "allowed:", "nodes"]),
        ("name: ok\ncommand: [x]\nresources: {gpu: 1}", ["resources.gpu", "accelerators"]),
        ("name: ok\ncommand: [x]\nframework: {name: jax, version: '1'}", ["sklearn", "pytorch"]),
        ("name: ok\ncommand: [x]\nenv: {MLCLOUD_JOB_ID: x}", ["MLCLOUD_JOB_ID"]),
        (
            "name: ok\ncommand: [x]\nimage: a\nframework: {name: sklearn, version: '1.5'}",
            ["either"],
        ),
        ("- a list\n- not a mapping", ["mapping"]),
        ("name: [unclosed", ["line 1"]),
    ],
)
def test_bad_specs_name_field_and_allowed(tmp_path: Path, text: str, must_mention: list[str]):
    with pytest.raises(SpecError) as err:
        load_job(write(tmp_path, text))
    for fragment in must_mention:
        assert fragment in str(err.value), str(err.value)


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "name: ok\ncommand: [x]\n")
    job = load_job(path, ["resources.cpus=4", "nodes={min: 1, max: 2}", "hyperparameters.lr=0.1"])
    assert job.resources.cpus == 4 and job.max_nodes == 2 and job.hyperparameters["lr"] == 0.1
    with pytest.raises(SpecError, match="KEY=VALUE"):
        load_job(path, ["novalue"])
    with pytest.raises(SpecError, match="not a mapping"):
        load_job(path, ["name.x=1"])


def test_missing_file_is_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        load_job(tmp_path / "nope.yaml")


def test_units() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration(90) == 90 and parse_duration("2d")
    assert format_duration(5400) == "1h30m"
    assert parse_size("4Gi") == 4 * 1024**3 and parse_size("512M") == 512 * 10**6
    for bad in ("", "1x", "-5", True, 0):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_deployment_spec() -> None:
    d = validate_spec(
        Deployment, {"name": "iris", "model": "/m", "replicas": {"min": 1, "max": 3}}, "d"
    )
    assert d.min_replicas == 1 and d.max_replicas == 3
    with pytest.raises(SpecError, match="add up to 100"):
        validate_spec(Deployment, {"name": "a", "model": "m", "traffic": {"a": 50}}, "d")


def test_json_schema_exports() -> None:
    schema = json_schema("job")
    assert schema["title"] == "TrainingJob" and "command" in schema["required"]
    assert "properties" in json_schema("deployment")
    with pytest.raises(SpecError):
        json_schema("nope")


# ---- hypothesis: whatever the file holds, only SpecError comes out --------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
fields = st.sampled_from([*list(TrainingJob.model_fields), "bogus", "resources.cpus"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(fields, values, max_size=8))
def test_random_values_only_raise_spec_error(data: dict[str, object]) -> None:
    try:
        validate_spec(TrainingJob, data, "job")
    except SpecError as e:
        assert str(e).startswith("invalid job")


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_random_yaml_text_only_raises_spec_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(SpecError):
        load_job(path)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=4))
def test_random_overrides_only_raise_spec_error(overrides: list[str]) -> None:
    from mlcloud.yamlio import apply_overrides

    try:
        data = apply_overrides({"name": "ok", "command": ["x"]}, overrides)
        validate_spec(TrainingJob, data, "job")
    except SpecError:
        pass
