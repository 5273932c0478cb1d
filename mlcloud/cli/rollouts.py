"""``mlcloud rollouts``: canary rollouts that promote or roll back by themselves.

Everything goes through :mod:`mlcloud.rollouts` (imported inside each command: ``mlcloud
--help`` loads none of it), or with ``MLCLOUD_SERVER`` set through the team server's
``/v1/rollouts`` (the same calls; the server's controller decides), printed the same way."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import click

from mlcloud.cli.core import _ago, _facade, _table, cli, emit_records, output_option


def _rollouts() -> Any:
    """:mod:`mlcloud.rollouts`, or the team server's rollouts (``Client.rollouts``)."""
    facade = _facade()
    if not isinstance(facade, ModuleType):  # mlcloud.client.Client
        return facade.rollouts
    from mlcloud import rollouts

    return rollouts


def _weights(value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: comma-separated percentages, e.g. 10,50,100"
        ) from None


def _seconds(value: str) -> float:
    from mlcloud.units import parse_duration

    try:
        return float(parse_duration(value))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: {exc}") from None


@cli.group(invoke_without_command=True)
@output_option
@click.pass_context
def rollouts(ctx: click.Context, output: str) -> None:
    """Canary rollouts: list them, show one's decisions, abort one (rolls back)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(rollouts_list, endpoint=None, output=output)


def _summary(row: Any) -> list[str]:
    traffic = f"{row.weight}%" if row.state in ("baking", "starting") else "-"
    return [
        f"r-{row.id}", row.endpoint, row.provider, row.state, traffic,
        f"{row.step + 1}/{len(row.steps)}", row.gate, _ago(row.created_at),
    ]  # fmt: skip


@rollouts.command("list")
@click.option("--endpoint", help="Only the rollouts of this endpoint.")
@output_option
def rollouts_list(endpoint: str | None, output: str) -> None:
    """Every rollout, newest first."""
    ro = _rollouts()
    rows = ro.list_rollouts(endpoint)
    if output == "json":
        emit_records([r.to_dict() for r in rows])
        return
    if not rows:
        click.echo("no rollouts (start one: mlcloud rollouts start MODEL --name N --canary 10 …)")
        return
    headers = ["id", "endpoint", "provider", "state", "canary", "step", "gate", "started"]
    _table(headers, [_summary(r) for r in rows])


@rollouts.command("show")
@click.argument("rollout_id")
@output_option
def rollouts_show(rollout_id: str, output: str) -> None:
    """One rollout with every decision and its numbers (restarts a dead controller)."""
    ro = _rollouts()
    row = ro.get(rollout_id)
    if output == "json":
        emit_records(row.to_dict())
        return
    _describe(row)


def _describe(row: Any) -> None:
    click.echo(f"rollout r-{row.id}: {row.state}")
    click.echo(f"  endpoint   {row.endpoint} ({row.provider})")
    click.echo(f"  model      {row.model}")
    click.echo(f"  versions   stable {row.stable_version}, canary {row.canary_version or '-'}")
    steps = " → ".join(f"{w}%" for w in row.steps)
    click.echo(f"  steps      {steps} (now step {row.step + 1}), bake {row.bake_s:g}s each")
    click.echo(f"  gate       {row.gate} (judged after {row.min_requests} requests)")
    if row.last_check:
        c = row.last_check
        click.echo(
            f"  last check {c.get('requests')} requests, {c.get('errors')} errors, "
            f"p50 {c.get('p50_ms')} ms, p99 {c.get('p99_ms')} ms at {c.get('weight')}%"
        )
    if row.message:
        click.echo(f"  why        {row.message}")
    click.echo("decisions:")
    for d in row.decisions:
        when = time.strftime("%H:%M:%S", time.localtime(d["at"]))
        click.echo(f"  {when}  {d['action']:<8} {d['reason']}")


@rollouts.command("abort")
@click.argument("rollout_id")
@output_option
def rollouts_abort(rollout_id: str, output: str) -> None:
    """Roll the canary back now; the stable version serves throughout."""
    ro = _rollouts()
    row = ro.abort(rollout_id)
    if output == "json":
        emit_records(row.to_dict())
        return
    click.echo(f"rollout r-{row.id}: {row.state} ({row.stable_version} serves all traffic)")


@rollouts.command("start")
@click.argument("model")
@click.option("-n", "--name", required=True, help="The endpoint (serving already).")
@click.option("-p", "--provider", metavar="NAME", help="Profile the endpoint is on.")
@click.option("--canary", type=click.IntRange(1, 99), default=10, show_default=True,
              help="The new version's first share of traffic, in percent.")  # fmt: skip
@click.option("--bake", default="10m", show_default=True, help="How long each step bakes.")
@click.option("--gate", default="error_rate<1%,p99_ms<200", show_default=True,
              help="What the canary stays under (error_rate %, p50_ms/p99_ms ms).")  # fmt: skip
@click.option("--steps", help="The canary's weight at each step, e.g. 10,50,100.")
@click.option("--min-requests", type=click.IntRange(1), default=20, show_default=True,
              help="Requests the canary must answer in a step before it is judged.")  # fmt: skip
@click.option("--trust-code", is_flag=True, help="Trust the model's own code (see deploy).")
@click.option("--force", is_flag=True, help="Even if the new model takes other inputs.")
@click.option("--follow", is_flag=True, help="Run the controller here until it decides.")
@output_option
def rollouts_start(
    model: str, name: str, provider: str | None, canary: int, bake: str, gate: str,
    steps: str | None, min_requests: int, trust_code: bool, force: bool, follow: bool,
    output: str,
) -> None:  # fmt: skip
    """Deploy MODEL as a canary of endpoint NAME; promote or roll back by the gate."""
    ro = _rollouts()
    row = ro.start(
        model, name, provider, canary, _seconds(bake), gate, _weights(steps), follow,
        min_requests=min_requests, trust_code=trust_code, force=force,
    )  # fmt: skip
    if output == "json":
        emit_records(row.to_dict())
        return
    if follow:
        _describe(row)
        return
    click.echo(
        f"rollout r-{row.id}: {row.canary_version} serves {row.weight}% of {name} beside "
        f"{row.stable_version}; the controller decides (pid {(row.controller or {}).get('pid')})"
    )
    click.echo(f"follow it: mlcloud rollouts show r-{row.id}")
