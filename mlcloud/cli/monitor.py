"""``mlcloud monitor ENDPOINT``: drift of what an endpoint received against its model's training
baseline, as a table, JSON, an HTML report and Prometheus gauges (:mod:`mlcloud.monitor`).
With ``MLCLOUD_SERVER`` set the check runs on the team server (``/v1/monitor``) and the result
is printed and written here, as locally."""

from __future__ import annotations

import sys
from typing import Any

import click

from mlcloud.cli.core import (
    EXIT_FAILED,
    _facade,
    _table,
    cli,
    emit_json,
    output_option,
    provider_option,
)


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE (NAME * for every feature)",
                                     param_hint=what)  # fmt: skip
        out[name] = value
    return out


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@cli.command("monitor")
@click.argument("endpoint")
@click.option(
    "--window",
    default="24h",
    show_default=True,
    help="How far back to read the captured requests (30m, 24h, 7d).",
)
@click.option(
    "--baseline",
    metavar="NAME:VERSION|DIR",
    default=None,
    help="Compare with this model's baseline instead of the serving one's.",
)
@click.option(
    "--report",
    "report_path",
    is_flag=False,
    flag_value="drift.html",
    default=None,
    metavar="FILE",
    help="Write the HTML report (default file: drift.html).",
)
@click.option(
    "--prometheus",
    "prom_path",
    metavar="FILE",
    default=None,
    help="Write the drift gauges in Prometheus text format (- for stdout).",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="FEATURE=VALUE",
    help="A feature's threshold (p-value level for tests; distance otherwise).",
)
@click.option(
    "--method",
    "methods",
    multiple=True,
    metavar="FEATURE=METHOD",
    help="Force a statistic: ks, wasserstein, psi, chi2, jensenshannon.",
)
@click.option(
    "--correction",
    type=click.Choice(["bh", "bonferroni", "none"]),
    default="bh",
    show_default=True,
    help="Multiple-testing correction across features.",
)
@click.option(
    "--alpha", type=float, default=0.05, show_default=True, help="The tests' significance level."
)
@click.option("--fail-on-drift", is_flag=True, help="Exit 1 when any feature drifted.")
@click.option(
    "--history",
    is_flag=True,
    help="Show the scheduled checks (deploy --on-drift) and what each did instead.",
)
@provider_option
@output_option
def monitor(endpoint: str, window: str, baseline: str | None, report_path: str | None,
            prom_path: str | None, thresholds: tuple[str, ...], methods: tuple[str, ...],
            correction: str, alpha: float, fail_on_drift: bool, history: bool,
            provider: str | None, output: str) -> None:  # fmt: skip
    """Drift of ENDPOINT's captured requests against its model's training baseline.

    \b
    Per feature and for the predictions: Kolmogorov-Smirnov / chi-squared on small samples,
    normed Wasserstein / Jensen-Shannon on large ones, PSI too; corrected across features.
    The endpoint needs `capture:` in its deployment and a model saved with
    runtime.save_model(..., reference=X_train).
    """
    if history:
        _history(endpoint, output)
        return
    from mlcloud.monitor import drift, report
    from mlcloud.units import parse_duration

    try:
        window_s = parse_duration(window)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--window") from None
    try:
        limits = {k: float(v) for k, v in _pairs(thresholds, "--threshold").items()}
    except ValueError:
        raise click.BadParameter("a threshold must be a number", param_hint="--threshold") from None
    config = drift.DriftConfig(alpha=alpha, thresholds=limits, correction=correction,
                               methods=_pairs(methods, "--method"))  # fmt: skip
    result = _check(endpoint, window_s, baseline, config, provider)
    if report_path:
        report.write(result, report_path)
    if prom_path:
        text = report.prometheus(result)
        if prom_path == "-":
            click.echo(text, nl=False)
        else:
            with open(prom_path, "w", encoding="utf-8") as fh:
                fh.write(text)
    if output == "json":
        emit_json({**result.to_dict(), "report": report_path})
    elif prom_path != "-":
        _print(result, report_path)
    if fail_on_drift and result.drifted:
        sys.exit(EXIT_FAILED)


def _check(endpoint: str, window_s: float, baseline: str | None, config: Any,
           provider: str | None) -> Any:  # fmt: skip
    """One check, here or on the team server (the result sent with every field)."""
    import types

    from mlcloud.monitor import check, drift

    facade = _facade()
    if isinstance(facade, types.ModuleType):
        return check.check_endpoint(endpoint, window_s=window_s, baseline=baseline,
                                    config=config, provider=provider)  # fmt: skip
    fields = facade.drift_check(
        endpoint, window_s=window_s, baseline=baseline, alpha=config.alpha,
        correction=config.correction, thresholds=config.thresholds, methods=config.methods,
        provider=provider,
    )  # fmt: skip
    return drift.DriftResult.from_fields(fields)


def _print(result: Any, report_path: str | None) -> None:
    click.echo(f"endpoint {result.endpoint}: {result.rows:,} captured rows "
               f"({result.dropped:,} dropped); baseline {result.baseline}")  # fmt: skip
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    columns = [*result.features, *([result.prediction] if result.prediction else [])]
    _table(
        ["feature", "kind", "method", "statistic", "threshold", "p_adj", "psi", "drift"],
        [[f.name, f.kind, f.method, _cell(f.statistic), _cell(f.threshold), _cell(f.p_adjusted),
          _cell(f.psi), "DRIFT" if f.drifted else "-"] for f in columns],
    )  # fmt: skip
    drifted = result.drifted
    click.echo(f"drift in {len(drifted)} feature(s): {', '.join(drifted)}" if drifted
               else "no drift")  # fmt: skip
    if report_path:
        click.echo(f"report: {report_path}")


def _history(endpoint: str, output: str) -> None:
    import time
    import types

    facade = _facade()
    if isinstance(facade, types.ModuleType):
        from mlcloud.monitor import alerts

        checks = alerts.history(endpoint)
    else:
        checks = facade.drift_history(endpoint)
    if output == "json":
        emit_json(checks)
        return
    if not checks:
        click.echo(f"no scheduled checks of {endpoint} yet (deploy --on-drift, mlcloud scheduler)",
                   err=True)  # fmt: skip
        return
    _table(
        ["checked", "rows", "action", "drifted"],
        [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c["checked_at"])), str(c["rows"]),
          c["action"], ", ".join(c["drifted"]) or c["message"] or "-"] for c in checks],
    )  # fmt: skip
