"""The ``mlcloud`` command line.

Start-up is kept cheap: this module imports only click; specs, providers and SDKs are imported
inside the command that needs them (``mlcloud --help`` loads no pydantic, no cloud SDK).
Every failure is one ``error:`` line plus a ``hint:`` line and a non-zero exit, never a
traceback unless ``--debug``.

The commands only parse arguments and print: every operation goes through the SDK facade
(``mlcloud.api``), which hands back records and raises ``mlcloud.errors``. No provider logic
lives here (an import-linter contract keeps this module off the registry, the providers, the
store and the config).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from mlcloud.records import JobRecord, Plan

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1  # the operation or the job failed
EXIT_BAD_INPUT = 2  # bad spec / config / arguments (click uses 2 for usage errors too)
EXIT_INTERRUPTED = 130


def exit_code(error: BaseException) -> int:
    """The one exit-code rule: 2 when the user's input is wrong (a spec, a setting, an unknown
    job id or endpoint name, a feature the chosen provider cannot honour), 1 when something
    failed (the backend, a model, the job itself, anything unexpected)."""
    from mlcloud.errors import ConfigError, NotFoundLocally, SpecError, UnsupportedFeature

    bad_input = (SpecError, ConfigError, NotFoundLocally, UnsupportedFeature)
    return EXIT_BAD_INPUT if isinstance(error, bad_input) else EXIT_FAILED


def output_option(f: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="json: one JSON object or array on stdout, for scripts.",
    )(f)


def provider_option(f: F) -> F:
    return click.option(
        "-p",
        "--provider",
        metavar="NAME",
        help="Profile in mlcloud.yaml or provider type (default: MLCLOUD_PROVIDER, the file's "
        "default, local).",
    )(f)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def emit_records(data: Any) -> None:
    """Records, plans and specs as JSON, every environment in them redacted (secret-looking
    values never reach a terminal, a CI log or a script's output)."""
    from mlcloud.sensitive import redact

    emit_json(redact(data))


def _ago(ts: float) -> str:
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _table(headers: list[str], rows: Iterable[list[str]]) -> None:
    rows = list(rows)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def emit_list(
    records: Sequence[Any],
    output: str,
    *,
    empty: str,
    headers: list[str],
    row: Callable[[Any], list[str]],
) -> None:
    """A list command's output: every record as JSON, a hint on stderr when there are none,
    else a table with one ``row(record)`` each."""
    if output == "json":
        emit_records([r.to_dict() for r in records])
    elif not records:
        click.echo(empty, err=True)
    else:
        _table(headers, [row(r) for r in records])


def _facade() -> Any:
    """What the commands call: :mod:`mlcloud.api`, or with ``MLCLOUD_SERVER`` set the team
    server's client (:mod:`mlcloud.client`: the same operations, records and errors)."""
    import os

    if os.environ.get("MLCLOUD_SERVER", "").strip():
        from mlcloud import client

        return client.from_env()
    from mlcloud import api

    return api


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="mlcloud")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Train and serve the same job and model locally, on-prem, SageMaker, Vertex AI or Azure ML.

    \b
    mlcloud train examples/iris/job.yaml --follow     train (detached; --follow streams logs)
    mlcloud deploy <job-id> --name iris               serve the job's model
    mlcloud predict iris --data '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
    """
    ctx.obj = {"debug": debug}


# ---- training -------------------------------------------------------------------------------
@cli.command()
@click.argument("file", default="job.yaml", type=click.Path(dir_okay=False))
@provider_option
@click.option("--dry-run", is_flag=True, help="Print the exact native request; send nothing.")
@click.option("-f", "--follow", is_flag=True, help="Stream the logs until the job ends.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a field.")
@output_option
def train(
    file: str,
    provider: str | None,
    dry_run: bool,
    follow: bool,
    overrides: tuple[str, ...],
    output: str,
) -> None:
    """Run a training job described by FILE (default: job.yaml)."""
    api = _facade()

    if dry_run:
        _print_plan(_planned(lambda: api.plan(file, provider, list(overrides))), output)
        return
    job = api.train(file, provider, list(overrides))
    record = job.record
    if output == "json" and not follow:
        emit_records(record.to_dict())
        return
    click.echo(f"submitted {record.id} to {record.provider} ({record.type})", err=True)
    if not follow:
        click.echo(record.id)
        click.echo(f"follow it with: mlcloud logs {record.id} -f", err=True)
        return
    # With --output json, stdout holds one JSON document: the log goes to stderr.
    _follow(record.id, job.logs(follow=True), err=output == "json")
    final = job.wait()  # advances the job (a due restart happens here) until it ends
    if output == "json":
        emit_records(final.to_dict())
    else:
        _print_outcome(final)
    if final.state != "SUCCEEDED":
        sys.exit(EXIT_FAILED)


def _planned(make: Callable[[], Plan[Any]]) -> Plan[Any]:
    """Make a dry-run's plan, its warnings (missing settings) on stderr as ``warning:`` lines."""
    import warnings

    from mlcloud.api import MissingSettingsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingSettingsWarning)
        plan = make()
    for w in caught:  # SDKs' own deprecation chatter is not the user's business
        if issubclass(w.category, MissingSettingsWarning):
            click.echo(f"warning: {w.message}", err=True)
    return plan


def _print_plan(plan: Plan[Any], output: str) -> None:
    from mlcloud.sensitive import redact

    data = redact(plan.to_dict())  # the exact requests, but for secret-looking values
    if output == "json":
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"# provider {plan.provider} ({plan.type}), {len(plan.steps)} call(s)")
    for step in data["steps"]:
        click.echo(f"{step['call']}:")
        click.echo(json.dumps(step["request"], indent=2, default=str))


def _print_outcome(record: JobRecord) -> None:
    click.echo(
        f"job {record.id}: {record.state}" + (f" ({record.message})" if record.message else "")
    )
    for key, value in sorted(record.outputs.items()):
        click.echo(f"  {key}: {value}")


@cli.group(invoke_without_command=True)
@click.option("-p", "--provider", metavar="NAME", help="Only this profile's jobs.")
@output_option
@click.pass_context
def jobs(ctx: click.Context, provider: str | None, output: str) -> None:
    """List jobs (all providers) or show one."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(jobs_list, provider=provider, output=output)


@jobs.command("list")
@click.option("-p", "--provider", metavar="NAME", help="Only this profile's jobs.")
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@output_option
def jobs_list(provider: str | None = None, limit: int = 50, output: str = "text") -> None:
    """Jobs recorded in the local state store, newest first."""
    api = _facade()

    records = api.list_jobs(provider, limit)
    if output == "json":
        emit_records([r.to_dict() for r in records])
        return
    if not records:
        click.echo("no jobs yet: mlcloud train job.yaml", err=True)
        return
    _table(
        ["id", "provider", "state", "created", "attempts", "exit"],
        [
            [r.id, r.provider, str(r.state), _ago(r.created_at), str(r.attempts),
             "" if r.exit_code is None else str(r.exit_code)]
            for r in records
        ],
    )  # fmt: skip


@jobs.command("show")
@click.argument("job_id")
@output_option
def jobs_show(job_id: str, output: str) -> None:
    """Refresh and show one job: state, attempts, outputs (model dir), history."""
    api = _facade()

    handle = api.job(job_id)
    record = handle.status()
    events = handle.events()
    if output == "json":
        emit_records({**record.to_dict(), "events": events})
        return
    click.echo(f"id:        {record.id}")
    click.echo(f"provider:  {record.provider} ({record.type})  native id: {record.native_id}")
    click.echo(f"state:     {record.state}" + (f" ({record.message})" if record.message else ""))
    code: object = record.exit_code
    if code is None:  # a cancelled job was stopped: it has no exit code of its own
        code = "- (cancelled)" if record.state == "CANCELLED" else "-"
    click.echo(f"attempts:  {record.attempts}  exit code: {code}")
    for key, value in sorted(record.outputs.items()):
        click.echo(f"{key + ':':<11} {value}")
    click.echo("history:")
    for e in events:
        when = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
        click.echo(f"  {when}  {e['state']:<10} {e['message'] or ''}")


@cli.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
def logs(job_id: str, follow: bool) -> None:
    """Print a job's logs."""
    api = _facade()

    _follow(job_id, api.job(job_id).logs(follow=follow))


def _follow(job_id: str, lines: Iterable[str], err: bool = False) -> None:
    """Print a job's log lines; Ctrl-C stops following, not the job, and says so."""
    try:
        for line in lines:
            click.echo(line, err=err)
    except KeyboardInterrupt:
        click.echo(
            f"stopped following; job {job_id} is still running "
            f"(mlcloud logs {job_id} -f to resume, mlcloud cancel {job_id} to stop it)",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)


@cli.command()
@click.argument("job_id")
@output_option
def cancel(job_id: str, output: str) -> None:
    """Stop a job (idempotent)."""
    api = _facade()

    record = api.job(job_id).cancel()
    if output == "json":
        emit_records(record.to_dict())
    else:
        click.echo(f"job {record.id}: {record.state}")


# ---- setup ----------------------------------------------------------------------------------
@cli.command()
@output_option
def providers(output: str) -> None:
    """Known providers, whether each is installed, and the configured profiles."""
    from mlcloud import api

    info = api.overview()
    if output == "json":
        emit_json(
            {
                "providers": [dataclasses.asdict(p) for p in info.providers],
                "profiles": [dataclasses.asdict(p) for p in info.profiles],
                "default": info.default,
                "warnings": list(info.warnings),
            }
        )
        return
    _table(
        ["provider", "installed", "origin", "install"],
        [[p.type, "yes" if p.installed else "no", p.origin, p.install or ""]
         for p in info.providers],
    )  # fmt: skip
    click.echo("")
    if info.profiles:
        _table(
            ["profile", "type", "from"],
            [[p.name + (" (default)" if p.default else ""), p.type, p.source]
             for p in info.profiles],
        )  # fmt: skip
    else:
        click.echo(f"no mlcloud.yaml: default provider is {info.default} (mlcloud init writes one)")
    for warning in info.warnings:
        click.echo(f"warning: {warning}", err=True)


@cli.command()
@click.option("--path", default="mlcloud.yaml", show_default=True, type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: str, force: bool) -> None:
    """Write a commented starter mlcloud.yaml."""
    from mlcloud import api

    click.echo(f"wrote {api.write_starter_config(path, force)}")


@cli.command()
@click.argument("kind", type=click.Choice(["job", "deployment", "pipeline"]), default="job")
def schema(kind: str) -> None:
    """Print the JSON Schema of job.yaml (or a deployment, or pipeline.yaml), for editors."""
    from mlcloud import api

    if kind == "pipeline":  # pipelines sit above the api layer
        from mlcloud import pipelines

        emit_json(pipelines.json_schema())
        return
    emit_json(api.json_schema(kind))


@cli.group()
def store() -> None:
    """The local state store: back it up, recover it."""


@store.command("recover")
@output_option
def store_recover(output: str) -> None:
    """Rebuild a damaged or emptied store: move it aside, restore the newest sound backup, and
    bring back every job whose directory holds a newer copy of its record."""
    from mlcloud import api

    report = api.recover_store()
    if output == "json":
        emit_json(report)
        return
    if report["moved_aside"]:
        click.echo(f"moved the damaged store aside: {report['moved_aside']}")
    if report["backup"]:
        click.echo(f"restored {report['jobs_from_backup']} job(s) from {report['backup']}")
    click.echo(f"brought back {report['jobs_from_job_dirs']} job(s) from their job directories")
    for path in report["unreadable"]:
        click.echo(f"warning: could not read {path}", err=True)
    click.echo(f"{report['store']} now holds {report['jobs']} job(s)")


@store.command("backup")
def store_backup() -> None:
    """Back up the store now (the store also keeps a rolling hourly backup)."""
    from mlcloud import api

    path = api.backup_store()
    click.echo(f"backed up to {path}" if path else "not kept: the copy failed its check")


def _warnings_as_lines() -> None:
    """mlcloud's own warnings as ``warning:`` lines; any other keeps Python's format."""
    import warnings

    from mlcloud.errors import MlcloudWarning

    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, MlcloudWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, *rest, **kw)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning mlcloud errors into one line + hint + exit code."""
    args = sys.argv[1:] if argv is None else argv
    _warnings_as_lines()
    try:
        cli.main(args=args, prog_name="mlcloud", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        from mlcloud.errors import MlcloudError

        if "--debug" in args or not isinstance(e, MlcloudError):
            if not isinstance(e, MlcloudError) and "--debug" not in args:
                click.echo(f"error: unexpected {type(e).__name__}: {e}", err=True)
                click.echo("hint: rerun with --debug for the traceback", err=True)
                sys.exit(EXIT_FAILED)
            raise
        click.echo(f"error: {e.message}", err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        sys.exit(exit_code(e))
