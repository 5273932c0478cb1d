"""Endpoint commands: ``deploy`` (also a canary rollout), ``endpoints``, ``predict``,
``undeploy`` and ``image build``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mlcloud.cli.core import (
    _facade,
    _planned,
    _print_plan,
    cli,
    emit_json,
    emit_list,
    emit_records,
    output_option,
    provider_option,
)

if TYPE_CHECKING:
    from mlcloud.api import DeployOptions
    from mlcloud.records import EndpointRecord


# ---- endpoints ------------------------------------------------------------------------------
@cli.command()
@click.argument("model")
@click.option("-n", "--name", required=True, help="Endpoint name (re-deploying updates it).")
@provider_option
@click.option("--replicas", type=int, help="Fixed replica count.")
@click.option("--min-replicas", type=int, help="Autoscaling lower bound.")
@click.option("--max-replicas", type=int, help="Autoscaling upper bound.")
@click.option("--port", type=int, help="Local provider: the endpoint's stable port.")
@click.option("--host", help="Local provider: bind address (non-loopback requires a token).")
@click.option("--env", "env_pairs", multiple=True, metavar="KEY=VALUE", help="Server env var.")
@click.option(
    "--trust-code",
    is_flag=True,
    help="Let the model run its own code when loaded (a pickle, a torch module class, a custom "
    "predictor) although no job mlcloud ran produced it. Only for models you trust.",
)
@click.option("--dry-run", is_flag=True, help="Print the exact native requests; change nothing.")
@click.option("--force", is_flag=True, help="Update even if the new model takes other inputs.")
@click.option(
    "--capture",
    type=click.FloatRange(0, 1, min_open=True),
    metavar="SAMPLE",
    help="Record this fraction of requests and predictions for `mlcloud monitor` (e.g. 0.1).",
)
@click.option(
    "--on-drift",
    metavar="PIPELINE",
    help="Check drift on a schedule (needs --capture) and fire PIPELINE's drift trigger.",
)
@click.option("--monitor-every", metavar="DURATION", help="How often to check drift (default 1h).")
@click.option(
    "--follow-alias",
    is_flag=True,
    help="MODEL is NAME@ALIAS: moving the alias (models alias / rollback) redeploys this endpoint.",
)
@click.option(
    "--canary",
    type=click.IntRange(1, 99),
    metavar="PERCENT",
    help="Roll MODEL out as a canary taking PERCENT of the serving endpoint's traffic, promoted "
    "or rolled back by --gate (same as `mlcloud rollouts start`).",
)
@click.option("--bake", default="10m", show_default=True, help="With --canary: each step's bake.")
@click.option(
    "--gate",
    default="error_rate<1%,p99_ms<200",
    show_default=True,
    help="With --canary: what the canary must stay under.",
)
@click.option("--steps", help="With --canary: the canary's weight at each step, e.g. 10,50,100.")
@output_option
@click.pass_context
def deploy(
    ctx: click.Context,
    model: str,
    name: str,
    provider: str | None,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    port: int | None,
    host: str | None,
    env_pairs: tuple[str, ...],
    trust_code: bool,
    dry_run: bool,
    force: bool,
    capture: float | None,
    on_drift: str | None,
    monitor_every: str | None,
    follow_alias: bool,
    canary: int | None,
    bake: str,
    gate: str,
    steps: str | None,
    output: str,
) -> None:
    """Serve MODEL (a model directory, URI, job id, or NAME@ALIAS / NAME:VERSION from the model
    registry) as endpoint --name."""
    if canary is not None and not dry_run:
        from mlcloud.cli.rollouts import rollouts_start

        ctx.invoke(
            rollouts_start, model=model, name=name, provider=provider, canary=canary,
            bake=bake, gate=gate, steps=steps, trust_code=trust_code, force=force, output=output,
        )  # fmt: skip
        return
    api = _facade()

    options: DeployOptions = {
        "replicas": replicas,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "port": port,
        "host": host,
        "env": _pairs(env_pairs, "--env"),
        "trust_code": trust_code,
        "capture": capture,
    }
    if on_drift or monitor_every:  # mlcloud.monitor.alerts runs the checks
        monitor: dict[str, object] = {"every": monitor_every or "1h"}
        if on_drift:
            monitor["on_drift"] = {"pipeline": on_drift}
        options["monitor"] = monitor
    if canary is not None:  # the dry-run of a canary: its first step's split
        options["traffic"] = {"new": canary, "previous": 100 - canary}
    if dry_run:
        _print_plan(_planned(lambda: api.plan_deploy(model, name, provider, **options)), output)
        return
    endpoint = api.deploy(model, name, provider, force=force, follow_alias=follow_alias, **options)
    record = endpoint.record
    if output == "json":
        emit_records(record.to_dict())
        return
    if endpoint.previous is not None:
        change = _versions(endpoint.previous, record)
        click.echo(f"endpoint {record.name} updated ({change}): {record.state} at {record.url}")
    else:
        click.echo(f"endpoint {record.name} is {record.state} at {record.url}")
    click.echo(f"try: mlcloud predict {record.name} --data '{{\"instances\": [...]}}'", err=True)


def _versions(old: EndpointRecord, new: EndpointRecord) -> str:
    """``version 1 → 2`` where the provider numbers its versions, else the models' digests."""
    before, after = (r.details.get("generation") or r.details.get("version") for r in (old, new))
    if before is not None and after is not None:
        return f"version {before} → {after}"
    digests = [(r.model_sha256 or "?")[:12] for r in (old, new)]
    return f"model {digests[0]} → {digests[1]}"


def _pairs(items: tuple[str, ...], flag: str) -> dict[str, str]:
    from mlcloud.errors import SpecError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


@cli.group(invoke_without_command=True)
@click.option("-p", "--provider", metavar="NAME", help="Only this profile's endpoints.")
@output_option
@click.pass_context
def endpoints(ctx: click.Context, provider: str | None, output: str) -> None:
    """List endpoints (all providers) or show one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(endpoints_list, provider=provider, output=output)


@endpoints.command("list")
@click.option("-p", "--provider", metavar="NAME", help="Only this profile's endpoints.")
@output_option
def endpoints_list(provider: str | None = None, output: str = "text") -> None:
    """Endpoints recorded in the local state store."""
    api = _facade()

    emit_list(
        api.list_endpoints(provider),
        output,
        empty="no endpoints yet: mlcloud deploy <model dir or job id> --name NAME",
        headers=["name", "provider", "state", "url", "source job"],
        row=lambda r: [r.name, r.provider, str(r.state), r.url or "", r.source_job or ""],
    )


@endpoints.command("show")
@click.argument("name")
@provider_option
@output_option
def endpoints_show(name: str, provider: str | None, output: str) -> None:
    """Refresh and show one endpoint."""
    api = _facade()

    record = api.endpoint(name, provider).status()
    _print_endpoint(record, output)


def _print_endpoint(record: EndpointRecord, output: str) -> None:
    if output == "json":
        emit_records(record.to_dict())
        return
    for key in ("name", "provider", "type", "state", "url", "model", "model_sha256",
                "source_job", "native_id", "message"):  # fmt: skip
        value = getattr(record, key)
        if value is not None:
            click.echo(f"{key + ':':<14}{value}")
    if "restarts" in record.details:  # processes a self-healing endpoint restarted
        click.echo(f"{'restarts:':<14}{record.details['restarts']}")
    if record.type == "local" and record.model:  # its server runs this machine's libraries
        from mlcloud.modeldir import version_warnings

        for warning in version_warnings(Path(record.model)):
            click.echo(f"{'warning:':<14}{warning}")
    click.echo(f"{'trust:':<14}{_trust_line(record.spec.get('trust'))}")


def _trust_line(trust: Any) -> str:
    """How the endpoint's model came to be trusted to run its code (README, Security)."""
    if not isinstance(trust, dict):
        return "its model runs no code of its own (or none was granted)"
    pinned = f", digest {str(trust['digest'])[:12]}…" if trust.get("digest") else ""
    by = {"job": f"made by job {trust.get('job')}", "trust-code": "--trust-code"}.get(
        str(trust.get("by")), str(trust.get("by"))
    )
    return f"code allowed: {by}{pinned}"


@cli.command()
@click.argument("name")
@click.option("-d", "--data", required=True, help="JSON, @file with JSON, or - for standard input.")
@provider_option
@output_option
def predict(name: str, data: str, provider: str | None, output: str) -> None:
    """Send one prediction request to endpoint NAME and print the JSON answer (the answer is
    JSON either way: --output json only prints it compact, on one line)."""
    api = _facade()
    from mlcloud.errors import SpecError

    text = _read_data(data)
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise SpecError(
            f"--data is not valid JSON: {e}", hint="e.g. --data '{\"instances\": [[1, 2]]}'"
        ) from None
    answer = api.endpoint(name, provider).predict(payload)
    click.echo(
        json.dumps(answer, default=str) if output == "json" else json.dumps(answer, indent=2)
    )


MAX_DATA_BYTES = 64 << 20  # far above any endpoint's body limit (SageMaker's is 6 MB)


def _read_data(data: str) -> str:
    """``--data``: JSON, ``@file`` or ``-``, refused past MAX_DATA_BYTES before it is all read
    (``@/dev/zero`` reports size 0 and never ends)."""
    from mlcloud.errors import SpecError

    if data != "-" and not data.startswith("@"):
        return data
    limit = MAX_DATA_BYTES
    too_big = SpecError(
        f"--data {data}: larger than {limit >> 20} MiB", hint="send fewer instances per request"
    )
    try:
        if data == "-":
            raw = sys.stdin.buffer.read(limit + 1)
        else:
            path = Path(data[1:])
            if path.is_file() and path.stat().st_size > limit:
                raise too_big  # refused unread
            with path.open("rb") as fh:
                raw = fh.read(limit + 1)
    except OSError as e:
        raise SpecError(
            f"--data {data}: cannot read it: {e.strerror or e}",
            hint="@PATH names a JSON file (relative to this directory); - reads standard input",
        ) from None
    if len(raw) > limit:
        raise too_big
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(
            f"--data {data}: not UTF-8 text", hint='--data takes JSON, e.g. {"instances": [...]}'
        ) from None


@cli.command()
@click.argument("name")
@provider_option
def undeploy(name: str, provider: str | None) -> None:
    """Remove endpoint NAME and everything it runs (idempotent)."""
    api = _facade()
    from mlcloud.errors import NotFoundLocally

    try:
        handle = api.endpoint(name, provider)
    except NotFoundLocally:
        click.echo(f"endpoint {name} does not exist (nothing to do)")
        return
    handle.undeploy()
    click.echo(f"endpoint {name} removed")


@cli.group()
def image() -> None:
    """Build the serving image every cloud deploys."""


@image.command("build")
@click.argument("model_dir", required=False, type=click.Path(file_okay=False, exists=True))
@click.option(
    "-t",
    "--tag",
    default="mlcloud-serve",
    show_default=True,
    help="name[:version]; the version defaults to the model's digest (same model, same tag).",
)
@output_option
def image_build(model_dir: str | None, tag: str, output: str) -> None:
    """Build the Bento (and the container image when a container engine is available)."""
    from mlcloud import api
    from mlcloud.progress import Progress

    # No except here: a bad tag is a SpecError, a bad model dir a ModelError; each reports
    # itself (a ValueError catch once turned a tampered model into "Invalid value for --tag").
    with Progress(None, "building the Bento (bentoml build)"):
        result = api.build_image(model_dir, tag)
    if output == "json":
        emit_json(
            {
                "bento_tag": result.bento_tag,
                "image": result.image,
                "engine": result.engine,
                "message": result.message,
                "commands": list(result.commands),
            }
        )
        return
    click.echo(result.message)
    click.echo(f"bento: {result.bento_tag}")
    if result.image:
        click.echo(f"image: {result.image} (built with {result.engine})")
    if result.commands:
        click.echo("build the image where a container engine runs:")
        for command in result.commands:
            click.echo(f"  {command}")
