"""``mlcloud models``: the model registry (README "Registry"). Versions, aliases with their
append-only history, lineage, rollback. Everything goes through :mod:`mlcloud.api`, or with
``MLCLOUD_SERVER`` set through the team server's ``/v1/models`` (the same output)."""

from __future__ import annotations

import time
from typing import Any

import click

from mlcloud.cli.core import _ago, _facade, _table, cli, emit_json, emit_records, output_option


@cli.group(invoke_without_command=True)
@output_option
@click.pass_context
def models(ctx: click.Context, output: str) -> None:
    """The model registry: versions, aliases (champion, ...), their history, lineage."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(models_list, output=output)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@models.command("register")
@click.argument("source")
@click.option("-n", "--name", required=True, help="Model name (the next version is made).")
@click.option("--alias", help="Point this alias (e.g. champion) at the new version.")
@click.option("--reason", help="Why: recorded with the version and the alias move.")
@click.option("-p", "--provider", metavar="NAME", help="Profile the version lives on.")
@output_option
def models_register(
    source: str, name: str, alias: str | None, reason: str | None, provider: str | None,
    output: str,
) -> None:  # fmt: skip
    """Register SOURCE (a job id, a model dir, a URI, or NAME:VERSION) as a new version."""
    api = _facade()
    version = api.register_model(source, name, alias=alias, provider=provider, reason=reason)
    if output == "json":
        emit_records(version.to_dict())
        return
    native = version.details.get("native")
    where = f" (native: {', '.join(f'{k}={v}' for k, v in native.items())})" if native else ""
    click.echo(f"registered {version.ref} from {version.uri} on {version.provider}{where}")
    if alias:
        click.echo(f"{name}@{alias} → {version.version}")


@models.command("list")
@output_option
def models_list(output: str) -> None:
    """Every registered model: versions, latest, aliases."""
    api = _facade()
    rows = api.list_models()
    if output == "json":
        emit_json(rows)
        return
    if not rows:
        click.echo("no registered models yet: mlcloud models register JOB --name NAME")
        return
    _table(
        ["name", "versions", "latest", "aliases", "updated"],
        [
            [r["name"], str(r["versions"]), str(r["latest"] or "-"),
             " ".join(f"{a}→{v}" for a, v in r["aliases"].items()) or "-",
             _ago(r["updated_at"]) if r["updated_at"] else "-"]
            for r in rows
        ],
    )  # fmt: skip


@models.command("show")
@click.argument("ref")
@output_option
def models_show(ref: str, output: str) -> None:
    """NAME: its versions; NAME:VERSION or NAME@ALIAS: that version's lineage (data → job →
    version → endpoints), integrity and native registry drift."""
    api = _facade()
    detail = api.model(ref)
    if output == "json":
        emit_records(detail)
        return
    if "versions" in detail:
        _print_model(detail)
    else:
        _print_version(detail)


def _print_model(detail: dict[str, Any]) -> None:
    aliases = " ".join(f"{a}→{v}" for a, v in detail["aliases"].items()) or "none"
    click.echo(f"model {detail['name']}  aliases: {aliases}")
    for f in detail["followers"]:
        click.echo(f"  endpoint {f['endpoint']} ({f['provider']}) follows @{f['alias']}")
    _table(
        ["version", "aliases", "provider", "source job", "metrics", "created"],
        [
            [str(v["version"]), " ".join(v["aliases"]) or "-", v["provider"] or "-",
             v["source_job"] or "-",
             " ".join(f"{k}={_num(m)}" for k, m in sorted(v["metrics"].items())) or "-",
             _when(v["created_at"])]
            for v in detail["versions"]
        ],
    )  # fmt: skip


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_version(d: dict[str, Any]) -> None:
    lineage = d["lineage"]
    click.echo(f"{d['ref']}  aliases: {' '.join(d['aliases']) or '-'}  on {d['provider']}")
    click.echo(f"  uri:        {d['uri']}")
    click.echo(f"  sha256:     {d['sha256'] or '-'}")
    click.echo(f"  framework:  {d['framework'] or '-'}")
    click.echo(f"  created:    {_when(d['created_at'])} by {d['created_by']}")
    details = d["details"]
    for key in ("metrics", "params"):
        values = details.get(key) or {}
        shown = " ".join(f"{k}={_num(v)}" for k, v in sorted(values.items())) or "-"
        click.echo(f"  {key + ':':<11} {shown}")
    click.echo("lineage:")
    for name, data in sorted(lineage["data"].items()):
        click.echo(f"  data {name}: {data['uri']} ({data['kind']} {(data['digest'] or '-')[:19]})")
    job = lineage["job"]
    if job:
        click.echo(f"  job {job['id']} on {job.get('provider', '?')} ({job.get('state', '?')})")
    click.echo(f"  version {d['ref']}")
    for ep in lineage["endpoints"]:
        follows = f", follows {ep['follows']}" if ep["follows"] else ""
        click.echo(f"  endpoint {ep['name']} on {ep['provider']} ({ep['state']}{follows})")
    if d["native"]:
        click.echo("native: " + ", ".join(f"{k}={v}" for k, v in sorted(d["native"].items())))
    for line in d["drift"]:
        click.echo(f"drift: {line}")
    for problem in d["integrity"]:
        click.echo(f"INTEGRITY: {problem}")


@models.command("alias")
@click.argument("name")
@click.argument("alias")
@click.argument("version", type=int)
@click.option("--reason", help="Why: recorded in the alias history.")
@click.option("--if-at", "expect", type=int, help="Move only if the alias points here now.")
@output_option
def models_alias(
    name: str, alias: str, version: int, reason: str | None, expect: int | None, output: str
) -> None:
    """Point NAME@ALIAS at VERSION (endpoints following the alias are redeployed)."""
    api = _facade()
    move = api.move_alias(name, alias, version, reason=reason, expect=expect)
    _print_move(api, move, output)


@models.command("rollback")
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, help="The alias to move back.")
@click.option("--reason", help="Why: recorded in the alias history.")
@output_option
def models_rollback(name: str, alias: str, reason: str | None, output: str) -> None:
    """Move NAME@ALIAS back to the version it pointed at before its last move (and redeploy
    the endpoints following it)."""
    api = _facade()
    move = api.rollback_model(name, alias, reason=reason)
    _print_move(api, move, output)


def _print_move(api: Any, move: Any, output: str) -> None:
    later = [m for m in api.alias_history(move.name) if m.seq > move.seq]
    if output == "json":
        emit_json({**move.to_dict(), "followers": [m.to_dict() for m in later]})
        return
    before = "-" if move.from_version is None else str(move.from_version)
    click.echo(f"{move.name}@{move.alias}: {before} → {move.to_version}")
    for m in later:
        click.echo(f"  {m.reason}")


@models.command("history")
@click.argument("name")
@output_option
def models_history(name: str, output: str) -> None:
    """Every alias move of NAME, oldest first (append-only: who, when, why)."""
    api = _facade()
    moves = api.alias_history(name)
    if output == "json":
        emit_json([m.to_dict() for m in moves])
        return
    _table(
        ["seq", "alias", "move", "when", "by", "reason"],
        [
            [str(m.seq), m.alias,
             _moved(m.from_version, m.to_version),
             _when(m.at), m.by, m.reason or ""]
            for m in moves
        ],
    )  # fmt: skip


def _moved(before: int | None, after: int | None) -> str:
    """``1 → 2``; ``= 2`` for an entry that moved nothing (a redeploy, a rollout's note)."""
    if before == after:
        return f"= {after}"
    return f"{'-' if before is None else before} → {'-' if after is None else after}"


@models.command("delete")
@click.argument("ref")
@output_option
def models_delete(ref: str, output: str) -> None:
    """Delete NAME:VERSION (refused while an alias points at it or an endpoint serves it)."""
    from mlcloud.errors import SpecError

    api = _facade()

    name, _, number = ref.partition(":")
    if not number.isdigit():
        raise SpecError(f"{ref!r}: name the version to delete", hint="e.g. iris:3")
    api.delete_model_version(name, int(number))
    if output == "json":
        emit_json({"deleted": f"{name}:{number}"})
    else:
        click.echo(f"deleted {name}:{number}")
