"""``mlcloud pipelines``: run a pipeline.yaml (detached, resumable, cached), look at its runs,
schedule its triggers; ``mlcloud scheduler`` fires them on a single machine.

Everything goes through :mod:`mlcloud.pipelines` (imported inside each command: ``mlcloud
--help`` loads none of it), or with ``MLCLOUD_SERVER`` set through the team server's
``/v1/pipelines`` (:class:`_Remote`), with the same output; ``scheduler`` stays local (a server
runs its own)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from mlcloud.cli.core import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    _ago,
    _facade,
    _table,
    cli,
    emit_json,
    emit_list,
    emit_records,
    output_option,
    provider_option,
)


def _pipelines() -> Any:
    """:mod:`mlcloud.pipelines`, or with ``MLCLOUD_SERVER`` set its calls on the team server."""
    import types

    facade = _facade()
    if isinstance(facade, types.ModuleType):
        from mlcloud import pipelines

        return pipelines
    return _Remote(facade)


class _Remote:
    """The calls the commands make, on the team server: a pipeline file is read and validated
    here (job files inlined, relative paths resolved on this machine) and sent as JSON, as
    ``train`` sends a job file; runs, runners and triggers live on the server."""

    def __init__(self, client: Any) -> None:
        from mlcloud import pipelines

        self.client, self.load, self.FINAL = client, pipelines.load, pipelines.FINAL

    def run(self, file: str, provider: str | None, overrides: Any, *, no_cache: bool) -> Any:
        data = self.load(file, overrides)[1]
        return self.client.run_pipeline(data, provider, no_cache=no_cache)

    def plan(self, file: str, provider: str | None, overrides: Any) -> Any:
        return self.client.plan_pipeline(self.load(file, overrides)[1], provider)

    def schedule(self, file: str, provider: str | None) -> Any:
        from pathlib import Path

        data = self.load(file)[1]
        return self.client.schedule_pipeline(data, str(Path(file).resolve()), provider)

    @staticmethod
    def describe(row: Any) -> Any:
        return row.described

    def __getattr__(self, name: str) -> Any:
        """get, runs, resume, cancel, logs, unschedule, scheduled, trigger: the client's."""
        calls = {"get": "pipeline_run", "runs": "pipeline_runs", "resume": "resume_pipeline",
                 "cancel": "cancel_pipeline", "logs": "pipeline_logs",
                 "unschedule": "unschedule_pipeline", "scheduled": "scheduled_pipelines",
                 "trigger": "trigger_pipeline"}  # fmt: skip
        if name not in calls:
            raise AttributeError(name)
        return getattr(self.__dict__["client"], calls[name])


@cli.group(invoke_without_command=True)
@output_option
@click.pass_context
def pipelines(ctx: click.Context, output: str) -> None:
    """Pipelines (pipeline.yaml): run them, follow their runs, schedule their triggers."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(pipelines_runs, name=None, limit=50, output=output)


@pipelines.command("run")
@click.argument("file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@provider_option
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="params.NAME=VALUE",
    help="Override a param (typed like its default).",
)
@click.option("-f", "--follow", is_flag=True, help="Show the steps until the run ends.")
@click.option("--dry-run", is_flag=True, help="Print every step's native plan; run nothing.")
@click.option("--no-cache", is_flag=True, help="Run every step, even unchanged ones.")
@output_option
def pipelines_run(
    file: str,
    provider: str | None,
    overrides: tuple[str, ...],
    follow: bool,
    dry_run: bool,
    no_cache: bool,
    output: str,
) -> None:
    """Run the pipeline in FILE (default: pipeline.yaml), detached: it survives this command."""
    pl = _pipelines()

    if dry_run:
        _print_dry_run(pl.plan(file, provider, overrides), output)
        return
    row = pl.run(file, provider, overrides, no_cache=no_cache)
    _started(row, follow, output)


def _started(row: Any, follow: bool, output: str) -> None:
    pl = _pipelines()

    if not follow:
        if output == "json":
            emit_records(pl.describe(row))
            return
        click.echo(row.id)
        click.echo(f"follow it with: mlcloud pipelines show {row.id}", err=True)
        return
    final = _follow(row.id, err=output == "json")
    if output == "json":
        emit_records(pl.describe(final))
    if final.state != "SUCCEEDED":
        sys.exit(EXIT_FAILED)


def _follow(run_id: str, err: bool) -> Any:
    """Print each step's state changes until the run ends; Ctrl-C stops following only."""
    pl = _pipelines()

    seen: dict[str, str] = {}
    click.echo(f"run {run_id}", err=err)
    try:
        while True:
            row = pl.get(run_id)
            for step in row.steps:
                said = f"{step.state} {step.message or ''}"
                if seen.get(step.step) != said and step.state != "WAITING":
                    seen[step.step] = said
                    cached = " (cached)" if step.cached else ""
                    click.echo(
                        f"  {step.step:<14} {step.state}{cached}  {step.message or ''}", err=err
                    )
            if row.state in pl.FINAL:
                click.echo(
                    f"run {run_id}: {row.state}" + (f" ({row.message})" if row.message else ""),
                    err=err,
                )
                return row
            time.sleep(0.2)
    except KeyboardInterrupt:
        click.echo(
            f"stopped following; run {run_id} goes on (mlcloud pipelines show {run_id}, "
            f"mlcloud pipelines cancel {run_id})",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)


def _print_dry_run(plan: dict[str, Any], output: str) -> None:
    from mlcloud.sensitive import redact

    for warning in plan["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    data = redact({k: v for k, v in plan.items() if k != "warnings"})
    if output == "json":
        emit_json(data)
        return
    click.echo(f"# pipeline {plan['pipeline']}: {len(plan['steps'])} step(s)")
    for step in data["steps"]:
        needs = f" (after {', '.join(step['needs'])})" if step["needs"] else ""
        click.echo(f"## {step['step']}: {step['kind']} on {step['provider']}{needs}")
        if "plan" in step:
            for call in step["plan"]["steps"]:
                click.echo(f"{call['call']}:")
                click.echo(json.dumps(call["request"], indent=2, default=str))
        if "call" in step:
            click.echo(f"{step['call']}: {json.dumps(step['request'], default=str)}")
        if "note" in step:
            click.echo(f"# {step['note']}")


@pipelines.command("runs")
@click.argument("name", required=False)
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@output_option
def pipelines_runs(name: str | None, limit: int, output: str) -> None:
    """Runs (of pipeline NAME, or all), newest first."""
    pl = _pipelines()

    emit_list(
        pl.runs(name, limit),
        output,
        empty="no pipeline runs yet: mlcloud pipelines run pipeline.yaml",
        headers=["run", "pipeline", "state", "started", "reason", "message"],
        row=lambda r: [r.id, r.pipeline, r.state, _ago(r.created_at), r.reason[:40],
                       (r.message or "")[:60]],
    )  # fmt: skip


@pipelines.command("show")
@click.argument("run_id")
@output_option
def pipelines_show(run_id: str, output: str) -> None:
    """The run's DAG: each step's state, duration, provider, job and message."""
    pl = _pipelines()

    data = pl.describe(pl.get(run_id))
    if output == "json":
        emit_records(data)
        return
    click.echo(f"run:      {data['id']} ({data['pipeline']})")
    click.echo(f"state:    {data['state']}" + (f" ({data['message']})" if data["message"] else ""))
    click.echo(f"reason:   {data['reason']}")
    _table(
        ["step", "kind", "state", "after", "took", "provider", "job", "message"],
        [
            [
                s["step"],
                s["kind"],
                s["state"] + (" (cached)" if s["cached"] else ""),
                ",".join(s["needs"]) or "-",
                "-" if s["duration_s"] is None else f"{s['duration_s']:.1f}s",
                s["provider"] or "-",
                s["job_id"] or "-",
                (s["message"] or "")[:70],
            ]
            for s in data["steps"]
        ],
    )


@pipelines.command("logs")
@click.argument("run_id")
@click.argument("step", required=False)
def pipelines_logs(run_id: str, step: str | None) -> None:
    """The run's log, or STEP's job log."""
    pl = _pipelines()

    for line in pl.logs(run_id, step):
        click.echo(line)


@pipelines.command("resume")
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Show the steps until the run ends.")
@output_option
def pipelines_resume(run_id: str, follow: bool, output: str) -> None:
    """Run again what did not succeed; a step whose job still runs is adopted, not resent."""
    pl = _pipelines()

    _started(pl.resume(run_id), follow, output)


@pipelines.command("cancel")
@click.argument("run_id")
@output_option
def pipelines_cancel(run_id: str, output: str) -> None:
    """Stop the run: no new step starts, running jobs are cancelled (idempotent)."""
    pl = _pipelines()

    row = pl.cancel(run_id)
    if output == "json":
        emit_records(pl.describe(row))
    else:
        click.echo(f"run {row.id}: {'cancelling' if row.state == 'RUNNING' else row.state}")


@pipelines.command("schedule")
@click.argument("file", default="pipeline.yaml", type=click.Path(dir_okay=False))
@provider_option
@output_option
def pipelines_schedule(file: str, provider: str | None, output: str) -> None:
    """Register FILE's triggers (schedule, data, model, drift); `mlcloud scheduler` fires them."""
    pl = _pipelines()

    result = pl.schedule(file, provider)
    for warning in result["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    if output == "json":
        emit_json(result)
        return
    click.echo(f"scheduled {result['pipeline']}: {len(result['triggers'])} trigger(s)")
    click.echo("they fire while a scheduler runs: mlcloud scheduler (or mlcloud server)", err=True)


@pipelines.command("unschedule")
@click.argument("name")
def pipelines_unschedule(name: str) -> None:
    """Stop firing pipeline NAME's triggers."""
    pl = _pipelines()

    click.echo(f"{name}: " + ("unscheduled" if pl.unschedule(name) else "was not scheduled"))


@pipelines.command("scheduled")
@output_option
def pipelines_scheduled(output: str) -> None:
    """Scheduled pipelines, their triggers' state and last firings."""
    pl = _pipelines()

    rows = pl.scheduled()
    if output == "json":
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']} ({row['file']})")
        for f in row["last_firings"]:
            click.echo(
                f"  {_ago(f['at']):>8}  {f['state']:<9} {f['run_id'] or '-':<24} {f['reason']}"
            )


@pipelines.command("trigger")
@click.argument("name")
@click.option("--reason", default="manual", show_default=True, help="e.g. drift.")
@click.option("--detail", help="What happened, recorded with the firing.")
@output_option
def pipelines_trigger(name: str, reason: str, detail: str | None, output: str) -> None:
    """Fire scheduled pipeline NAME now (a drift alert's hook); it runs when no run is active."""
    pl = _pipelines()

    firing = pl.trigger(name, reason, detail)
    if output == "json":
        emit_json(firing.to_dict())
        return
    click.echo(
        f"fired {name} ({firing.reason}): {firing.state}"
        + (f", run {firing.run_id}" if firing.run_id else "")
    )


@cli.command()
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 3600),
    help="Seconds between looks at the triggers.",
)
@click.option("--once", is_flag=True, help="Look once, start what is due, and exit.")
def scheduler(interval: float, once: bool) -> None:
    """Fire scheduled pipelines' triggers, and run endpoints' scheduled drift checks, on this
    machine until stopped (Ctrl-C)."""
    from mlcloud import pipelines as pl
    from mlcloud.monitor import alerts

    if once:
        for firing in pl.tick():
            click.echo(f"fired {firing.pipeline}: {firing.reason}")
        for check in alerts.tick():
            click.echo(f"drift check {check.endpoint}: {check.action}")
        return
    click.echo(f"scheduler running (every {interval:g}s); Ctrl-C stops it", err=True)
    _, stop_checks = alerts.start_thread()
    try:
        pl.serve(interval=interval)
    except KeyboardInterrupt:
        click.echo("scheduler stopped", err=True)
    finally:
        stop_checks.set()
