"""``mlcloud jobs compare``: the params and final metrics of jobs side by side."""

from __future__ import annotations

import json
from typing import Any

import click

from mlcloud.cli.core import emit_json, jobs, output_option

DIFFERS = "*"  # marks a row whose values differ between the jobs


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


@jobs.command("compare")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB JOB...")
@click.option("--all", "show_all", is_flag=True, help="Also rows where every job agrees.")
@output_option
def jobs_compare(job_ids: tuple[str, ...], show_all: bool, output: str) -> None:
    """Params and final metrics of two or more jobs, side by side.

    Rows whose values differ are marked with *; rows where all jobs agree are hidden unless
    --all (the JSON output has every row, each with "differs").
    """
    from mlcloud import api

    table = api.compare_jobs(list(job_ids))
    if output == "json":
        emit_json(table.to_dict())
        return
    for job in table.jobs:
        if job["note"]:
            click.echo(f"note: {job['id']}: {job['note']}", err=True)
    rows = [r for r in table.rows if show_all or r.differs]
    hidden = len(table.rows) - len(rows)
    if not table.rows:
        click.echo("none of these jobs logged params or metrics (runtime.log_metrics)", err=True)
        return
    header = ["", "KIND", "NAME", *[j["id"] for j in table.jobs]]  # job ids keep their case
    cells = [[DIFFERS if r.differs else "", r.kind, r.name, *map(_cell, r.values)] for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    if hidden:
        click.echo(f"({hidden} row(s) where all jobs agree hidden; --all shows them)", err=True)
