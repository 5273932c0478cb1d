"""``pipelines run --dry-run``: every step's native plan, in DAG order, sending nothing.

A job step's plan is the provider's own (``api.plan``); an input an upstream step will produce
is planned from an empty stand-in directory and shown as ``<STEP.FIELD>``. A deploy step's plan
needs its model: one that exists now (a registered version, a model dir) is planned with
``api.plan_deploy``; one an upstream step will make is shown as the mlcloud call it will be.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlcloud import api
from mlcloud.errors import MlcloudError
from mlcloud.pipelines import spec as pspec
from mlcloud.pipelines import steps as run_steps
from mlcloud.pipelines.spec import _REF, Pipeline, Step


def plan(
    file: str | Path | Mapping[str, Any],
    provider: str | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """``{"pipeline", "steps": [{"step", "kind", "needs", "provider", "plan"|"call"}...],
    "warnings"}``; warnings name settings a profile lacks (placeholders in the plans).
    ``file`` may be the pipeline as ``spec.load`` returned it (what a team server is sent)."""
    if isinstance(file, Mapping):
        pipeline = pspec.validate(pspec.apply_params(dict(file), overrides), "pipeline")
    else:
        pipeline, _ = pspec.load(file, overrides)
    graph = pspec.edges(pipeline)
    out: list[dict[str, Any]] = []
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("always", api.MissingSettingsWarning)
        for name in pspec.order(pipeline):
            step = pipeline.step(name)
            entry: dict[str, Any] = {"step": name, "kind": step.kind, "needs": sorted(graph[name])}
            ctx = _context(pipeline, step, provider, Path(tmp))
            entry["provider"] = ctx.provider_of(step) or api.resolve_profile(None).name
            entry.update(_step_plan(ctx, step, Path(tmp)))
            out.append(entry)
    said = [str(w.message) for w in caught if issubclass(w.category, api.MissingSettingsWarning)]
    return {"pipeline": pipeline.name, "steps": out, "warnings": list(dict.fromkeys(said))}


def _context(pipeline: Pipeline, step: Step, provider: str | None, tmp: Path) -> run_steps.Context:
    """Upstream outputs as stand-ins: an empty directory per ``STEP.FIELD`` a job reads."""
    outputs: dict[str, dict[str, Any]] = {}
    for value in step.inputs.values():
        m = _REF.match(value)
        if m is not None:
            stand_in = tmp / value
            stand_in.mkdir(exist_ok=True)
            outputs.setdefault(m.group(1), {})[m.group(2)] = str(stand_in)
    return run_steps.Context("dry-run", pipeline, outputs, provider, cancelled=lambda: False)


def _step_plan(ctx: run_steps.Context, step: Step, tmp: Path) -> dict[str, Any]:
    provider = ctx.provider_of(step)
    if step.kind == "job":
        planned = api.plan(run_steps.job_spec(ctx, step), provider)
        text = json.dumps(planned.to_dict())
        for value in step.inputs.values():  # the stand-in's path → the reference it stands for
            text = text.replace(str(tmp / value), f"<{value}>")
        # on a cloud the stand-in is staged like any local input (a content-addressed upload)
        return {"plan": json.loads(text), "inputs": dict(step.inputs)}
    if step.kind == "condition":
        return {"call": "mlcloud.condition", "request": {"expression": step.condition}}
    if step.kind == "register":
        assert step.register_ is not None
        return {
            "call": "mlcloud.register_model",
            "request": {**step.register_.model_dump(), "provider": step.provider},
        }
    assert step.deploy is not None
    call = {
        "call": "mlcloud.rollouts.start" if step.deploy.canary else "mlcloud.deploy",
        "request": step.deploy.model_dump(),
    }
    if _REF.match(step.deploy.model) is None:
        try:
            deploy = api.plan_deploy(step.deploy.model, step.deploy.endpoint, provider)
            return {**call, "plan": deploy.to_dict()}
        except MlcloudError as e:  # not registered yet: an upstream step registers it
            return {**call, "note": f"native plan when the run gets here ({e.message})"}
    return {**call, "note": "native plan when the run gets here (an upstream step makes the model)"}
