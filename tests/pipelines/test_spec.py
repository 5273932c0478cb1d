"""pipeline.yaml validation and the condition language (issue 12, item 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcloud.errors import SpecError
from mlcloud.pipelines import expr
from mlcloud.pipelines import spec as pspec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def job(name: str = "j") -> dict[str, Any]:
    return {"name": name, "command": ["python", "-c", "pass"]}


def base(**extra: Any) -> dict[str, Any]:
    return {
        "name": "p",
        "params": {"min": 0.9, "epochs": 3, "flag": True, "tag": "x"},
        "steps": [
            {"name": "train", "job": job("train")},
            {"name": "evaluate", "job": job("ev"), "inputs": {"model": "train.model"}},
            {"name": "gate", "condition": "evaluate.metrics.accuracy >= params.min"},
            {
                "name": "register",
                "register": {"model": "train.model", "name": "iris", "alias": "challenger"},
                "needs": ["gate"],
            },
            {
                "name": "deploy",
                "deploy": {"model": "iris@challenger", "endpoint": "iris", "canary": 10},
            },
        ],
        **extra,
    }


def load_error(tmp_path: Path, data: dict[str, Any], *overrides: str) -> str:
    with pytest.raises(SpecError) as err:
        pspec.load(write(tmp_path, data), overrides)
    return err.value.message


def test_the_design_skeleton_loads_with_its_edges(tmp_path: Path) -> None:
    pipeline, data = pspec.load(write(tmp_path, base()))
    graph = pspec.edges(pipeline)
    assert graph == {
        "train": set(),
        "evaluate": {"train"},
        "gate": {"evaluate"},
        "register": {"gate", "train"},
        "deploy": {"register"},
    }
    assert pspec.order(pipeline) == ["train", "evaluate", "gate", "register", "deploy"]
    # inline jobs are anchored at the pipeline's directory
    assert data["steps"][0]["job"]["source"] == str(tmp_path)


def test_the_example_loads_and_job_files_are_inlined() -> None:
    pipeline, data = pspec.load(REPO / "examples/pipeline/pipeline.yaml")
    train = data["steps"][0]["job"]
    assert train["source"] == str(REPO / "examples/iris")
    assert train["inputs"]["train"] == str(REPO / "examples/iris/data")
    assert [t.kind for t in pipeline.triggers] == ["schedule", "data", "drift"]
    assert pipeline.triggers[1].data == str(REPO / "examples/iris/data")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["steps"][1]["inputs"].update(model="trian.model"),
            "step 'evaluate', inputs.model: unknown step 'trian'",
        ),
        (
            lambda d: d["steps"][2].update(condition="evaluate.metrics.x > params.nope"),
            "step 'gate', condition: unknown param 'nope'",
        ),
        (
            lambda d: d["steps"][3].update(needs=["ghost"]),
            "step 'register', needs: unknown step 'ghost'",
        ),
        (
            lambda d: d["steps"][2].update(condition="evaluate.model_dir > 1"),
            "step 'gate', condition: a job step has no output 'model_dir'",
        ),
        (lambda d: d["steps"][0].update(needs=["deploy"]), "a cycle (train -> deploy -> register"),
        (lambda d: d["steps"].append({"name": "train", "job": job()}), "two steps are named"),
        (
            lambda d: d["steps"][0].update(set={"hyperparameters.lr": "${params.lr}"}),
            "step 'train', set: unknown param 'lr'",
        ),
    ],
)
def test_graph_errors_name_the_step_and_field(tmp_path: Path, change: Any, expected: str) -> None:
    data = base()
    change(data)
    assert expected in load_error(tmp_path, data)


def test_pydantic_errors_are_one_spec_error(tmp_path: Path) -> None:
    data = base()
    data["steps"][0]["condition"] = "True"
    assert "exactly one of job, condition, register, deploy (got job, condition)" in load_error(
        tmp_path, data
    )
    data = base()
    data["steps"][4]["deploy"]["canary"] = 150
    assert "steps.4.deploy.canary" in load_error(tmp_path, data)
    data = base(triggers=[{"schedule": "every day"}])
    assert "not a valid cron expression" in load_error(tmp_path, data)
    data = base(triggers=[{"schedule": "0 3 * * *", "timezone": "Mars/Olympus"}])
    assert "not an IANA time zone" in load_error(tmp_path, data)
    data = base(triggers=[{"data": "./d", "model": "iris@champion"}])
    assert "exactly one of schedule, data, model, drift" in load_error(tmp_path, data)


def test_set_params_are_typed_by_their_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    pipeline, _ = pspec.load(path, ["params.min=0.95", "params.epochs=5", "params.flag=false"])
    assert pipeline.params == {"min": 0.95, "epochs": 5, "flag": False, "tag": "x"}
    assert pspec.load(path, ["params.min=1"])[0].params["min"] == 1.0  # an int for a float
    for bad, said in (
        ("params.epochs=many", "expected int"),
        ("params.nope=1", "no param 'nope'"),
        ("epochs=1", "params.NAME=VALUE"),
        ("params.flag=3", "expected bool"),
    ):
        with pytest.raises(SpecError, match=said):
            pspec.load(path, [bad])


def test_params_substitute_into_jobs() -> None:
    assert pspec.substitute(
        {"a": "${params.n}", "b": "x-${params.n}", "c": ["${params.s}"]}, {"n": 3, "s": "y"}
    ) == {"a": 3, "b": "x-3", "c": ["y"]}


# ---- the condition language ----------------------------------------------------------------------
def run(text: str, **names: Any) -> Any:
    return expr.evaluate(expr.parse(text), expr.lookup_in(names))


def test_conditions_evaluate() -> None:
    ns = {"params": {"min": 0.9, "tags": ["a"]}, "ev": {"metrics": {"acc": 0.95, "f1-x": 0.5}}}
    assert run("ev.metrics.acc >= params.min", **ns) is True
    assert run("ev.metrics.acc >= params.min and not ev.metrics['f1-x'] > 0.6", **ns) is True
    assert run("(ev.metrics.acc - params.min) * 100 > 4.9 or False", **ns) is True
    assert run("0.5 < ev.metrics.acc < 0.9", **ns) is False
    assert run("'a' in ('a', 'b')", **ns) is True


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('x')",
        "ev.__class__",
        "params.min ** 99999999",
        "[x for x in y]",
        "lambda: 1",
        "params.min if True else 0",
        "f'{params}'",
        "params[0]",
        "ev.metrics.acc()",
    ],
)
def test_anything_but_the_small_language_is_refused(text: str) -> None:
    with pytest.raises(expr.ExprError):
        expr.parse(text)


def test_a_missing_metric_says_what_exists() -> None:
    with pytest.raises(expr.ExprError, match=r"ev.metrics.accuracy does not exist \(it has: acc\)"):
        run("ev.metrics.accuracy > 1", ev={"metrics": {"acc": 1}})
    with pytest.raises(expr.ExprError, match="arithmetic needs numbers"):
        run("'a' * 10", x=1)
    with pytest.raises(expr.ExprError, match="division by zero"):
        run("1 / 0", x=1)
