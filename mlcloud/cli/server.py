"""``mlcloud server`` (the team server) and ``mlcloud tokens`` (its bearer tokens)."""

from __future__ import annotations

import click

from mlcloud.cli.core import _ago, _table, cli, emit_json, emit_list, output_option


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Bind address; beyond loopback a token must exist (mlcloud tokens create).",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--database-url",
    metavar="URL",
    help="The shared store (postgresql://…); default: MLCLOUD_DATABASE_URL or the "
    "SQLite store under MLCLOUD_HOME.",
)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Worker processes."
)
@click.option(
    "--predict-rate",
    default=50.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Predict calls per second per token and worker (burst: twice that).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def server(
    host: str, port: int, database_url: str | None, workers: int, predict_rate: float,
    log_level: str,
) -> None:  # fmt: skip
    """Run the team server: the control-plane API, the predict gateway, OpenAPI at /docs."""
    from mlcloud.server.run import serve
    from mlcloud.server.settings import Settings

    serve(
        Settings(
            host=host, port=port, workers=workers, database_url=database_url,
            predict_rate=predict_rate, predict_burst=max(1, int(predict_rate * 2)),
            log_level=log_level,
        )
    )  # fmt: skip


@cli.group()
def tokens() -> None:
    """The team server's bearer tokens (stored as hashes; shown once when created)."""


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["read", "admin"]), default="read", show_default=True)
@output_option
def tokens_create(name: str, role: str, output: str) -> None:
    """Create token NAME and print it (the only time it is shown)."""
    from mlcloud.server.auth import create_token

    token = create_token(name, role)
    if output == "json":
        emit_json({"name": name, "role": role, "token": token})
        return
    click.echo(f"created token {name!r} ({role}); it is not shown again:", err=True)
    click.echo(token)


@tokens.command("list")
@output_option
def tokens_list(output: str) -> None:
    """Tokens by name and role (never the tokens themselves)."""
    from mlcloud.server.auth import list_tokens

    emit_list(
        list_tokens(),
        output,
        empty="no tokens yet: mlcloud tokens create NAME --role admin",
        headers=["name", "role", "created", "by", "state"],
        row=lambda t: [t.name, t.role, _ago(t.created_at), t.created_by or "",
                       "revoked " + _ago(t.revoked_at) if t.revoked_at else "active"],
    )  # fmt: skip


@tokens.command("revoke")
@click.argument("name")
def tokens_revoke(name: str) -> None:
    """Revoke token NAME (a running server refuses it within a second)."""
    from mlcloud.server.auth import revoke_token

    revoke_token(name)
    click.echo(f"token {name} revoked")


@tokens.command("audit")
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@output_option
def tokens_audit(limit: int, output: str) -> None:
    """The server's audit log: every mutating call, who made it, when, and its outcome."""
    from mlcloud.server.auth import audit_log

    entries = audit_log(limit)
    if output == "json":
        emit_json(entries)
        return
    _table(
        ["when", "who", "action", "target", "status"],
        [[_ago(e["at"]), e["actor"], e["action"], e["target"] or "", str(e["status"])]
         for e in entries],
    )  # fmt: skip
