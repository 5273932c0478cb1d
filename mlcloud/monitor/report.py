"""The drift report: one self-contained HTML file (inline CSS and SVG, no script, no network)
with, per feature, the baseline and current histograms overlaid, the statistic, its threshold
and the verdict; the prediction distribution; the capture volume over time; and, when ground
truth was sent (``mlcloud feedback``), accuracy or error over time. Also the Prometheus text
export of the drift gauges."""

from __future__ import annotations

import html
import math
import time
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from mlcloud.monitor.drift import DriftResult, FeatureDrift

REFERENCE, CURRENT = "#1f77b4", "#ff7f0e"  # the tests look for these colours in a screenshot
WIDTH, HEIGHT, PAD = 420, 170, 28
RULE = (
    "Numeric columns: two-sample Kolmogorov-Smirnov when the smaller of the two samples has at "
    "most 1,000 values, else the Wasserstein distance in baseline standard deviations (drift at "
    "&ge; 0.1). Categorical columns (and numeric ones with at most 5 training values): "
    "chi-squared test of homogeneity when small, else the Jensen-Shannon distance (drift at "
    "&ge; 0.1). Test p-values are corrected across features ($correction) and drift when under "
    "the threshold (&alpha; = $alpha). PSI is shown for every column (baseline deciles)."
)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def write(result: DriftResult, path: Path | str) -> Path:
    """Write the report of ``result`` to ``path``; returns it."""
    target = Path(path)
    target.write_text(render(result), encoding="utf-8")
    return target


def render(result: DriftResult) -> str:
    drifted = result.drifted
    title = f"Drift report: {result.endpoint or result.baseline}"
    version = f", version {result.version}" if result.version else ""
    meta = (
        f"window {_when(result.since)} to {_when(result.until)}; {result.rows:,} captured rows"
        f" ({result.dropped:,} dropped by the capture){version}; baseline {result.baseline}"
    )
    verdict = f"drift in {len(drifted)} feature(s): {', '.join(drifted)}" if drifted else "no drift"
    notes = "".join(f'<p class="notes">note: {_e(n)}</p>' for n in result.notes)
    prediction = _card(result.prediction) if result.prediction else "<p>no prediction baseline</p>"
    template = Template(resources.files("mlcloud.monitor").joinpath("report.html").read_text())
    rule = Template(RULE).substitute(
        correction={"bh": "Benjamini-Hochberg", "bonferroni": "Bonferroni"}.get(
            result.correction, "no correction"
        ),
        alpha=_e(result.alpha),
    )
    return template.substitute(
        title=_e(title),
        meta=_e(meta),
        verdict_class="drift" if drifted else "ok",
        verdict=_e(verdict),
        notes=notes,
        table=_table(result),
        cards="\n".join(_card(f) for f in result.features),
        prediction=prediction,
        volume=_volume(result.volume),
        quality=_quality(result.quality),
        rule=rule,
    )


def _table(result: DriftResult) -> str:
    head = ("feature", "kind", "method", "statistic", "drift when", "p (adjusted)", "PSI",
            "missing base / cur", "rows base / cur", "")  # fmt: skip
    rows = []
    for f in result.features:
        status = "drift" if f.drifted else "ok"
        cells = [
            _e(f.name), f.kind, f.method, _num(f.statistic), _rule(f),
            _num(f.p_adjusted), _num(f.psi),
            f"{f.missing_reference:.1%} / {f.missing_current:.1%}",
            f"{f.n_reference:,} / {f.n_current:,}",
            f'<span class="badge {status}">{status.upper()}</span>',
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def _rule(f: FeatureDrift) -> str:
    """What drifts: a test's adjusted p-value under its level, a distance at its threshold."""
    if f.p_value is not None or f.method in ("ks", "chi2"):
        return f"p &lt; {_num(f.threshold)}"
    return f"&ge; {_num(f.threshold)}"


def _card(f: FeatureDrift) -> str:
    status = "drift" if f.drifted else "ok"
    p = f", p = {_num(f.p_adjusted)}" if f.p_adjusted is not None else ""
    return (
        f'<div class="card {status}" data-feature="{_e(f.name)}">'
        f'<h3>{_e(f.name)} <span class="badge {status}">{status.upper()}</span></h3>'
        f"<p>{f.method} {_num(f.statistic)}{p} (drift: {_rule(f)}), "
        f"PSI {_num(f.psi)}</p>{_chart(f)}</div>"
    )


def _chart(f: FeatureDrift) -> str:
    """Overlaid bars: the baseline's filled, the current's filled and half transparent."""
    chart = f.chart
    ref, cur = chart["reference"], chart["current"]
    n = len(ref)
    top = max([*ref, *cur, 1e-9])
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / max(n, 1)
    parts = [_svg_open(f.name)]
    for series, colour, cls in ((ref, REFERENCE, "ref"), (cur, CURRENT, "cur")):
        for i, value in enumerate(series):
            h = inner_h * value / top
            x = PAD + i * step + (0 if chart["type"] == "hist" or cls == "ref" else step / 2)
            w = step if chart["type"] == "hist" else step / 2
            parts.append(
                f'<rect class="bar {cls}" x="{x:.1f}" y="{PAD + inner_h - h:.1f}" '
                f'width="{max(w - 1, 1):.1f}" height="{h:.1f}" fill="{colour}" '
                f'fill-opacity="{0.55 if cls == "cur" else 0.85}"/>'
            )
    parts.append(_axis(chart, inner_w, inner_h, step))
    parts.append("</svg>")
    return "".join(parts)


def _svg_open(name: str) -> str:
    return (
        f'<svg class="chart" data-feature="{_e(name)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{_e(name)}: baseline vs current">'
    )


def _axis(chart: dict[str, Any], inner_w: float, inner_h: float, step: float) -> str:
    base = PAD + inner_h
    out = [f'<line x1="{PAD}" y1="{base}" x2="{PAD + inner_w}" y2="{base}" stroke="#888"/>']
    if chart["type"] == "hist":
        lo, hi = chart["edges"][0], chart["edges"][-1]
        out.append(f'<text x="{PAD}" y="{base + 14}">{_num(lo, 3)}</text>')
        out.append(
            f'<text x="{PAD + inner_w}" y="{base + 14}" text-anchor="end">{_num(hi, 3)}</text>'
        )
    else:
        for i, label in enumerate(chart["labels"][:12]):
            x = PAD + i * step + step / 2
            out.append(f'<text x="{x:.1f}" y="{base + 14}" text-anchor="middle">'
                       f"{_e(str(label)[:10])}</text>")  # fmt: skip
    return "".join(out)


def _volume(volume: dict[str, Any]) -> str:
    counts, edges = volume["counts"], volume["edges"]
    top = max([*counts, 1])
    inner_w, inner_h = 2 * WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / max(len(counts), 1)
    parts = [_svg_open("capture volume").replace(f'width="{WIDTH}"', f'width="{2 * WIDTH}"')
             .replace(f"0 0 {WIDTH} ", f"0 0 {2 * WIDTH} ")]  # fmt: skip
    for i, c in enumerate(counts):
        h = inner_h * c / top
        x, y, w = PAD + i * step, PAD + inner_h - h, max(step - 1, 1)
        parts.append(f'<rect class="bar vol" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" '
                     f'height="{h:.1f}" fill="{CURRENT}"/>')  # fmt: skip
    base = PAD + inner_h
    parts.append(f'<text x="{PAD}" y="{base + 14}">{_e(_when(edges[0]))}</text>')
    parts.append(f'<text x="{PAD + inner_w}" y="{base + 14}" text-anchor="end">'
                 f"{_e(_when(edges[-1]))}</text>")  # fmt: skip
    parts.append(f'<text x="{PAD}" y="{PAD - 8}">max {top:,} rows per bin</text></svg>')
    return "".join(parts)


def _quality(quality: dict[str, Any] | None) -> str:
    if not quality:
        return ""
    values = quality["values"]
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    top = max([v for _, v in points] + [1e-9]) if quality["metric"] != "accuracy" else 1.0
    inner_w, inner_h = 2 * WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / max(len(values) - 1, 1)
    xy = " ".join(f"{PAD + i * step:.1f},{PAD + inner_h - inner_h * v / top:.1f}"
                  for i, v in points)  # fmt: skip
    name = "accuracy" if quality["metric"] == "accuracy" else "mean absolute error"
    return (
        f"<h2>{name.capitalize()} over time</h2><p>{quality['labelled']:,} labelled rows, "
        f"overall {_num(quality['overall'])}</p>"
        + _svg_open(name)
        .replace(f'width="{WIDTH}"', f'width="{2 * WIDTH}"')
        .replace(f"0 0 {WIDTH} ", f"0 0 {2 * WIDTH} ")
        + f'<polyline class="quality" points="{xy}" fill="none" stroke="{REFERENCE}" '
        'stroke-width="2"/></svg>'
    )


# ---- Prometheus -------------------------------------------------------------------------------
def prometheus(result: DriftResult) -> str:
    """The drift gauges in Prometheus text format (for a node-exporter textfile collector or a
    push): per feature the statistic, its threshold and 0/1 drifted, the PSI, the rows."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = ["endpoint", "feature", "method"]
    gauges = {
        "statistic": Gauge("mlcloud_drift_statistic", "drift statistic of the feature",
                           labels, registry=registry),
        "threshold": Gauge("mlcloud_drift_threshold", "threshold the statistic is held to",
                           labels, registry=registry),
        "drifted": Gauge("mlcloud_drift_detected", "1 when the feature drifted",
                         labels, registry=registry),
        "psi": Gauge("mlcloud_drift_psi", "population stability index", labels,
                     registry=registry),
    }  # fmt: skip
    rows = Gauge("mlcloud_capture_rows", "captured rows in the window", ["endpoint"],
                 registry=registry)  # fmt: skip
    endpoint = result.endpoint or ""
    columns = [*result.features, *([result.prediction] if result.prediction else [])]
    for f in columns:
        key = (endpoint, f.name, f.method)
        gauges["statistic"].labels(*key).set(_finite(f.statistic))
        gauges["threshold"].labels(*key).set(f.threshold)
        gauges["drifted"].labels(*key).set(1.0 if f.drifted else 0.0)
        gauges["psi"].labels(*key).set(_finite(f.psi))
    rows.labels(endpoint).set(result.rows)
    return generate_latest(registry).decode("utf-8")


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")
