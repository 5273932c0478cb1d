"""The HTML report renders in headless Chromium (a screenshot is taken and its pixels read),
and a broken chart fails the same check (issue 13, item 4); the Prometheus export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlcloud.monitor import drift, profile, report
from tests.monitor import screenshot
from tests.monitor.helpers import NAMES, gaussian_model, shifted, window

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> drift.DriftResult:
    base = profile.load(gaussian_model(tmp_path_factory.mktemp("m") / "model", rows=3000))
    x = shifted(2000, 0.3)
    preds = (x[:, 0] + x[:, 1] > 0).astype(int)
    out = drift.compare(base, window(x, preds, since=1.7e9, until=1.7e9 + 86400),
                        since=1.7e9, until=1.7e9 + 86400)  # fmt: skip
    out.endpoint = "demo <&>"  # escaped, not markup
    return out


def test_the_report_is_self_contained(result: drift.DriftResult, tmp_path: Path) -> None:
    page = report.write(result, tmp_path / "drift.html")
    text = page.read_text()
    assert "demo &lt;&amp;&gt;" in text and "<script" not in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<link" not in text and "@import" not in text
    assert "drift in 1 feature(s): f2" in text


@pytest.mark.skipif(screenshot.CHROMIUM is None, reason=screenshot.MISSING)
def test_the_report_renders_in_headless_chromium(result: drift.DriftResult, tmp_path: Path) -> None:
    page = report.write(result, tmp_path / "drift.html")
    png = screenshot.screenshot(page, tmp_path / "drift.png")
    assert screenshot.problems(page, png, NAMES) == []


@pytest.mark.skipif(screenshot.CHROMIUM is None, reason=screenshot.MISSING)
@pytest.mark.parametrize(
    "breakage",
    [
        ('fill="#1f77b4"', 'fill="none"'),  # bars drawn in no colour
        ("<svg class", '<svg style="display:none" class'),  # charts not displayed
        ('height="', 'data-h="'),  # bars without a height
    ],
)
def test_a_broken_chart_fails_the_check(
    result: drift.DriftResult, tmp_path: Path, breakage: tuple[str, str]
) -> None:
    page = tmp_path / "broken.html"
    page.write_text(report.render(result).replace(*breakage))
    png = screenshot.screenshot(page, tmp_path / "broken.png")
    assert screenshot.problems(page, png, NAMES) != []


def test_prometheus_gauges(result: drift.DriftResult) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(report.prometheus(result))}
    drifted = {s.labels["feature"]: s.value for s in families["mlcloud_drift_detected"].samples}
    assert drifted == {"f0": 0.0, "f1": 0.0, "f2": 1.0, "f3": 0.0, "prediction": 0.0}
    stat = {s.labels["feature"]: s.value for s in families["mlcloud_drift_statistic"].samples}
    assert stat["f2"] == pytest.approx(result.features[2].statistic)
    assert families["mlcloud_capture_rows"].samples[0].value == 2000
    assert all(np.isfinite(s.value) for s in families["mlcloud_drift_threshold"].samples)
