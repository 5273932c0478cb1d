"""``mlcloud feedback ENDPOINT --labels FILE``: ground truth for captured predictions."""

from __future__ import annotations

from dataclasses import asdict

import click

from mlcloud.cli.core import cli, emit_json, output_option


@cli.command("feedback")
@click.argument("endpoint")
@click.option(
    "--labels",
    "labels_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="CSV with a request_id,label header, or JSON Lines of {request_id, label}.",
)
@output_option
def feedback(endpoint: str, labels_file: str, output: str) -> None:
    """Send ground truth for an endpoint's captured predictions, joined by request id.

    Each predict answer carries its request id in the x-request-id header (a caller may set
    its own). The labels are kept beside the capture; `mlcloud monitor` adds accuracy over time.
    """
    from mlcloud.monitor import capture

    result = capture.feedback(endpoint, labels_file)
    if output == "json":
        emit_json(asdict(result))
        return
    click.echo(
        f"{result.labels} label(s) stored for {endpoint}; "
        f"{result.matched} match a captured request of the last 30 days"
    )
    if result.matched < result.labels:
        click.echo(
            "hint: a label joins when its request_id is a captured request's x-request-id "
            "(capture samples requests: --capture 1.0 captures all)",
            err=True,
        )
