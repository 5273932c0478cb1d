"""``pipeline.yaml``: a DAG of steps with parameters and triggers (DESIGN.md, "The MLOps loop").

Strict like the job spec (:mod:`mlcloud.specs`): frozen pydantic models with ``extra="forbid"``;
the graph checks pydantic cannot do (unknown step references, cycles, params that do not exist,
``--set`` values of the wrong type) raise one :class:`SpecError` naming the step and the field.

References: ``STEP.FIELD`` in ``inputs``, ``register.model``, ``deploy.model`` and conditions
names an upstream output and implies an edge; ``needs`` adds edges by hand; a ``deploy.model``
``NAME@ALIAS`` whose NAME a register step of the pipeline registers depends on that step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, StringConstraints, field_validator, model_validator

from mlcloud.errors import SpecError
from mlcloud.pipelines import expr
from mlcloud.specs import NAME_PATTERN, InputName, _Spec, validate_spec
from mlcloud.units import parse_duration

StepName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
ParamName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
# What each kind of step hands downstream (STEP.FIELD); job metrics/params/outputs are mappings.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "job": ("model", "output", "job", "metrics", "params", "outputs", "provider"),
    "condition": ("value",),
    "register": ("ref", "name", "version", "uri"),
    "deploy": ("endpoint", "url", "rollout", "model"),
}
_REF = re.compile(r"^([a-z][a-z0-9_]{0,47})\.([A-Za-z_][A-Za-z0-9_.-]*)$")
_PARAM = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")


class RegisterSpec(_Spec):
    """Register a model (an upstream ``STEP.model``, a job id, a dir or URI) in the registry."""

    model: Text
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    alias: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,62}$")] | None = None


class DeploySpec(_Spec):
    """Serve a model (``NAME@ALIAS``, ``NAME:VERSION``, ``STEP.model``…) as ``endpoint``;
    ``canary``: a gradual rollout starting at that share when the endpoint already serves."""

    model: Text
    endpoint: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    canary: Annotated[int, Field(ge=1, le=99)] | None = None
    bake: str | int = "10m"
    gate: Text = "error_rate<1%,p99_ms<200"

    @field_validator("bake")
    @classmethod
    def _duration(cls, v: str | int) -> str | int:
        parse_duration(v)
        return v


class Step(_Spec):
    """One node of the DAG: exactly one of ``job``, ``condition``, ``register``, ``deploy``."""

    name: StepName = Field(description="lowercase letters, digits and '_' (used in conditions)")
    job: Text | dict[str, JsonValue] | None = Field(
        default=None, description="a job spec file (relative to pipeline.yaml) or an inline job"
    )
    condition: Text | None = Field(
        default=None, description="e.g. evaluate.metrics.accuracy >= params.min_accuracy"
    )
    register_: RegisterSpec | None = Field(default=None, alias="register")
    deploy: DeploySpec | None = None
    provider: Annotated[str, StringConstraints(min_length=1)] | None = None
    needs: list[StepName] = Field(default_factory=list)
    inputs: dict[InputName, Text] = Field(
        default_factory=dict, description="job input name -> STEP.model / STEP.output / path / URI"
    )
    set: dict[Text, JsonValue] = Field(
        default_factory=dict, description="job fields to override, e.g. hyperparameters.C"
    )
    cache: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("job", "condition", "register", "deploy") if getattr(self, _attr(k))]
        if len(kinds) != 1:
            got = ", ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a step has exactly one of job, condition, register, deploy (got {got})"
            )
        if (self.inputs or self.set) and kinds[0] != "job":
            raise ValueError("inputs and set apply to job steps only")
        if kinds[0] == "condition":
            try:
                expr.parse(str(self.condition))
            except expr.ExprError as e:
                raise ValueError(f"condition: {e}") from None
        return self

    @property
    def kind(self) -> Literal["job", "condition", "register", "deploy"]:
        if self.job is not None:
            return "job"
        if self.condition is not None:
            return "condition"
        return "register" if self.register_ is not None else "deploy"


def _attr(kind: str) -> str:
    return "register_" if kind == "register" else kind


class DriftHook(_Spec):
    endpoint: Annotated[str, StringConstraints(pattern=NAME_PATTERN)] | None = None


class Trigger(_Spec):
    """Exactly one of: ``schedule`` (cron, in ``timezone``), ``data`` (a path or URI whose
    content digest is checked ``every``; fires once it is unchanged for ``settle``), ``model``
    (``NAME@ALIAS``: fires when the alias moves), ``drift`` (fired by ``pipelines trigger``)."""

    schedule: Text | None = Field(default=None, description='cron, e.g. "0 3 * * *"')
    timezone: str = "UTC"
    data: Text | None = None
    every: str | int = "1m"
    settle: str | int = "2s"
    model: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*@[a-z][a-z0-9_-]*$")]
        | None
    ) = None
    drift: DriftHook | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        kinds = [k for k in ("schedule", "data", "model", "drift") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a trigger has exactly one of schedule, data, model, drift")
        parse_duration(self.every)
        parse_duration(self.settle)
        if self.schedule is not None:
            from croniter import croniter

            if not croniter.is_valid(self.schedule):
                raise ValueError(f"schedule {self.schedule!r} is not a valid cron expression")
            from zoneinfo import ZoneInfo

            try:
                ZoneInfo(self.timezone)
            except (ValueError, KeyError, OSError):
                raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from None
        return self

    @property
    def kind(self) -> str:
        for k in ("schedule", "data", "model"):
            if getattr(self, k) is not None:
                return k
        return "drift"


class Pipeline(_Spec):
    """The ``pipeline.yaml`` file."""

    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    params: dict[ParamName, JsonValue] = Field(default_factory=dict)
    provider: Annotated[str, StringConstraints(min_length=1)] | None = None
    steps: Annotated[list[Step], Field(min_length=1)]
    triggers: list[Trigger] = Field(default_factory=list)
    concurrency: Annotated[int, Field(ge=1, le=100)] = Field(
        default=1, description="runs of this pipeline allowed at once"
    )

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


def json_schema() -> dict[str, Any]:
    return Pipeline.model_json_schema()


# ---- loading ----------------------------------------------------------------------------------
def load(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Pipeline, dict[str, Any]]:
    """``pipeline.yaml`` and its ``--set`` overrides → (pipeline, raw data with job files
    inlined and relative paths made absolute: what a run stores and re-validates)."""
    from mlcloud.yamlio import read_yaml

    path = Path(path)
    data = read_yaml(path, what="pipeline file")
    if not isinstance(data, dict):
        raise SpecError(f"pipeline file {path}: expected a mapping of fields")
    data = apply_params(data, overrides)
    data = _inline_jobs(data, path.resolve().parent)
    return validate(data, f"pipeline file {path}"), data


def validate(data: dict[str, Any], what: str) -> Pipeline:
    pipeline = validate_spec(Pipeline, data, what)
    check_graph(pipeline)
    return pipeline


def apply_params(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``params.x=VALUE`` overrides, each value typed like the param's default."""
    from mlcloud.yamlio import parse_scalar

    params = dict(data.get("params") or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        name = key.strip().removeprefix("params.")
        if not sep or not key.strip().startswith("params.") or not name:
            raise SpecError(
                f"--set {item!r}: a pipeline takes params.NAME=VALUE",
                hint="e.g. --set params.min_accuracy=0.95",
            )
        if name not in params:
            raise SpecError(
                f"--set {item!r}: the pipeline has no param {name!r}",
                hint=f"its params: {', '.join(params) or 'none'}",
            )
        params[name] = _typed(name, parse_scalar(raw), params[name])
    return {**data, "params": params} if overrides else data


def _typed(name: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool) or default is None:
        ok = default is None or isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = type(value) is type(default)
    if not ok:
        raise SpecError(
            f"--set params.{name}={value!r}: expected {type(default).__name__} "
            f"like its default {default!r}"
        )
    return value


def _inline_jobs(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Read each job file into its step and anchor relative paths at the file that names them."""
    from mlcloud.yamlio import read_yaml

    steps = []
    for raw in data.get("steps") or []:
        if not isinstance(raw, dict) or raw.get("job") is None:
            steps.append(raw)
            continue
        job, where = raw["job"], base
        if isinstance(job, str):
            job_path = (base / job).resolve()
            job = read_yaml(job_path, what=f"job file of step {raw.get('name')!r}")
            where = job_path.parent
        if isinstance(job, dict):
            job = _anchor(job, where)
        steps.append({**raw, "job": job})
    triggers = [_anchor_data(t, base) for t in data.get("triggers") or []]
    return {**data, "steps": steps, **({"triggers": triggers} if triggers else {})}


def _anchor_data(trigger: Any, base: Path) -> Any:
    """A data trigger's relative path is relative to the pipeline file."""
    if not isinstance(trigger, dict) or not isinstance(trigger.get("data"), str):
        return trigger
    path = trigger["data"]
    if "://" in path and not path.startswith("file://"):
        return trigger
    local = Path(path.removeprefix("file://")).expanduser()
    return {**trigger, "data": str(local if local.is_absolute() else (base / local).resolve())}


def _anchor(job: dict[str, Any], base: Path) -> dict[str, Any]:
    def absolute(p: Any) -> Any:
        if not isinstance(p, str) or ("://" in p and not p.startswith("file://")) or "${" in p:
            return p
        local = Path(p.removeprefix("file://")).expanduser()
        return str(local if local.is_absolute() else (base / local).resolve())

    out = dict(job)
    out["source"] = absolute(job.get("source", "."))
    if isinstance(job.get("inputs"), dict):
        out["inputs"] = {k: absolute(v) for k, v in job["inputs"].items()}
    return out


# ---- the graph --------------------------------------------------------------------------------
def references(step: Step) -> list[tuple[str, str, str]]:
    """(field, upstream step, its output) for every ``STEP.FIELD`` the step reads."""
    found: list[tuple[str, str, str]] = []
    if step.condition is not None:
        for parts in expr.parse(step.condition).refs:
            if parts[0] != "params":
                found.append(("condition", parts[0], ".".join(parts[1:])))
    for name, value in step.inputs.items():
        if (m := _REF.match(value)) is not None:
            found.append((f"inputs.{name}", m.group(1), m.group(2)))
    for field, spec in (("register.model", step.register_), ("deploy.model", step.deploy)):
        if spec is not None and (m := _REF.match(spec.model)) is not None:
            found.append((field, m.group(1), m.group(2)))
    return found


def param_refs(step: Step) -> list[tuple[str, str]]:
    """(field, param name) for every ``params.NAME`` / ``${params.NAME}`` the step reads."""
    found: list[tuple[str, str]] = []
    if step.condition is not None:
        found += [
            ("condition", p[1] if len(p) > 1 else "")
            for p in expr.parse(step.condition).refs
            if p[0] == "params"
        ]
    for field, value in (("job", step.job), ("set", step.set)):
        found += [(field, m) for m in _PARAM.findall(str(value))]
    return found


def edges(pipeline: Pipeline) -> dict[str, set[str]]:
    """step → the steps it waits for (needs, references, registered names it deploys)."""
    names = {s.name for s in pipeline.steps}
    registers = {s.register_.name: s.name for s in pipeline.steps if s.register_ is not None}
    graph: dict[str, set[str]] = {}
    for step in pipeline.steps:
        up = set(step.needs) | {ref[1] for ref in references(step) if ref[1] in names}
        if step.deploy is not None and ("@" in step.deploy.model or ":" in step.deploy.model):
            model = re.split(r"[@:]", step.deploy.model)[0]
            if model in registers and registers[model] != step.name:
                up.add(registers[model])
        graph[step.name] = up
    return graph


def check_graph(pipeline: Pipeline) -> None:
    """Unknown steps, outputs a step kind has not, missing params, duplicates, cycles."""
    names = [s.name for s in pipeline.steps]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise SpecError(f"invalid pipeline {pipeline.name}: two steps are named {dup!r}")
    kinds = {s.name: s.kind for s in pipeline.steps}
    for step in pipeline.steps:
        for need in step.needs:
            if need not in kinds:
                _bad(pipeline, step, "needs", f"unknown step {need!r}", names)
        for field, up, output in references(step):
            if up not in kinds:
                _bad(pipeline, step, field, f"unknown step {up!r}", names)
            head = output.split(".")[0]
            if head not in OUTPUTS[kinds[up]]:
                _bad(
                    pipeline,
                    step,
                    field,
                    f"a {kinds[up]} step has no output {head!r} "
                    f"(it has {', '.join(OUTPUTS[kinds[up]])})",
                    names,
                )
        for field, param in param_refs(step):
            if param not in pipeline.params:
                known = ", ".join(pipeline.params) or "none"
                _bad(pipeline, step, field, f"unknown param {param!r} (params: {known})", names)
    order(pipeline)


def _bad(pipeline: Pipeline, step: Step, field: str, problem: str, names: list[str]) -> None:
    raise SpecError(
        f"invalid pipeline {pipeline.name}: step {step.name!r}, {field}: {problem}",
        hint=f"steps: {', '.join(names)}; `mlcloud schema pipeline` lists every field",
    )


def order(pipeline: Pipeline) -> list[str]:
    """The steps in an order where each comes after what it waits for; a cycle is a SpecError."""
    graph = edges(pipeline)
    done: list[str] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise SpecError(
                f"invalid pipeline {pipeline.name}: step {name!r}, needs: a cycle ({cycle})",
                hint="a step cannot wait for itself through its references or needs",
            )
        state[name] = 1
        for up in sorted(graph[name]):
            visit(up, [*path, name])
        state[name] = 2
        done.append(name)

    for step in pipeline.steps:
        visit(step.name, [])
    return done


def substitute(value: Any, params: dict[str, Any]) -> Any:
    """``${params.x}`` in strings (a whole-string reference keeps the param's type)."""
    if isinstance(value, dict):
        return {k: substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params) for v in value]
    if isinstance(value, str):
        whole = _PARAM.fullmatch(value)
        if whole is not None:
            return params[whole.group(1)]
        return _PARAM.sub(lambda m: str(params[m.group(1)]), value)
    return value
