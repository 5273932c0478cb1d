"""The iris drift demo end to end (issue 13, item 6): the example's train.py saves the model
with its baseline, `mlcloud deploy --capture 1.0` serves it on a real local endpoint (real
serving processes behind the front, capture files written by them), drift_demo.py sends
shifted traffic through mlcloud.api, and `mlcloud monitor iris --report` flags exactly the
shifted feature, in its JSON, its text and its report (rendered in Chromium when installed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from providers.local import endpoint_procs
from tests.conftest import MLCLOUD, REPO, cli_env
from tests.monitor import screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
IRIS = REPO / "examples" / "iris"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLCLOUD_HOME", str(home))
        mp.setenv("MLCLOUD_DEPLOY_TIMEOUT", "90")
        yield home
        subprocess.run([*MLCLOUD, "undeploy", "iris"], env=cli_env(MLCLOUD_HOME=str(home)),
                       capture_output=True, timeout=60)  # fmt: skip
        endpoint_procs.stop([], endpoint_procs.home_tag(home))


@pytest.fixture(scope="module")
def served(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("job") / "model"
    env = cli_env(MLCLOUD_INPUT_TRAIN=str(IRIS / "data"), MLCLOUD_MODEL_DIR=str(model),
                  MLCLOUD_OUTPUT_DIR=str(model.parent / "out"))  # fmt: skip
    subprocess.run([sys.executable, "train.py"], cwd=IRIS, env=env, check=True, timeout=120)
    deploy = [*MLCLOUD, "deploy", str(model), "--name", "iris", "--capture", "1.0",
              "--on-drift", "iris-retrain", "--monitor-every", "30m"]  # fmt: skip
    done = subprocess.run(deploy, env=cli_env(MLCLOUD_HOME=str(home)), capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return model


@pytest.fixture
def run(home: Path, tmp_path: Path) -> Callable[[list[str]], subprocess.CompletedProcess[str]]:
    """Run a command in the module's mlcloud home (each test's own is another), in tmp_path."""

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=tmp_path, env=cli_env(MLCLOUD_HOME=str(home)),
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    return run


Run = Callable[[list[str]], subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def demo(served: Path, home: Path) -> str:
    """drift_demo.py run once against the endpoint: 300 rows, sepal_width + 1.0 cm."""
    args = [sys.executable, str(IRIS / "drift_demo.py"), "--feature", "sepal_width",
            "--shift", "1.0", "--rows", "300"]  # fmt: skip
    sent = subprocess.run(args, env=cli_env(MLCLOUD_HOME=str(home)), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    return sent.stdout


def test_the_demo_is_flagged_on_exactly_the_shifted_feature(
    served: Path, demo: str, run: Run, tmp_path: Path
) -> None:
    assert "sent 300 rows to iris" in demo
    deadline = time.monotonic() + 30
    while True:  # the servers' writer thread flushes off the request path
        out = run([*MLCLOUD, "monitor", "iris", "--window", "1h", "-o", "json"])
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        if result["rows"] >= 300 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result["rows"] == 300 and result["dropped"] == 0
    assert result["drifted"] == ["sepal_width"]
    assert {f["method"] for f in result["features"]} == {"ks"}  # 120 training rows: tested
    assert result["baseline"] == str(served)

    text = run([*MLCLOUD, "monitor", "iris", "--window", "1h", "--report"])
    assert text.returncode == 0, text.stderr
    assert "drift in 1 feature(s): sepal_width" in text.stdout
    assert "report: drift.html" in text.stdout
    page = tmp_path / "drift.html"
    assert "drift in 1 feature(s): sepal_width" in page.read_text()
    if screenshot.CHROMIUM is not None:
        names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        png = screenshot.screenshot(page, tmp_path / "drift.png")
        assert screenshot.problems(page, png, names) == []

    failing = run([*MLCLOUD, "monitor", "iris", "--window", "1h", "--fail-on-drift",
                    "--prometheus", "-"])  # fmt: skip
    assert failing.returncode == 1
    assert 'mlcloud_drift_detected{endpoint="iris",feature="sepal_width"' in failing.stdout


def test_monitor_errors_are_one_line_with_a_hint(served: Path, run: Run, tmp_path: Path) -> None:
    missing = run([*MLCLOUD, "monitor", "nosuch"])
    assert missing.returncode == 2 and missing.stderr.startswith("error: no endpoint 'nosuch'")
    bad = run([*MLCLOUD, "monitor", "iris", "--threshold", "sepal_width"])
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr
    no_base = run([*MLCLOUD, "monitor", "iris", "--baseline", str(tmp_path)])
    assert no_base.returncode != 0 and "hint:" in no_base.stderr


def test_the_drift_alert_fires_the_retraining_pipeline_once(
    served: Path, demo: str, home: Path, run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop closed on the demo's endpoint: its deployment's `monitor` (from `deploy
    --on-drift`), the shifted traffic the first test sent, one firing of the pipeline."""
    from mlcloud import pipelines as pl
    from mlcloud.monitor import alerts, check
    from mlcloud.store import Store
    from mlcloud.store import pipelines as pdb

    monkeypatch.setenv("MLCLOUD_HOME", str(home))
    pipeline = {"name": "iris-retrain", "params": {"x": 1},
                "steps": [{"name": "gate", "condition": "params.x > 0"}],
                "triggers": [{"drift": {"endpoint": "iris"}}]}  # fmt: skip
    (tmp_path / "pipeline.yaml").write_text(json.dumps(pipeline))
    pl.schedule(tmp_path / "pipeline.yaml")
    store = Store.open(home)
    try:
        record = store.get_endpoint("iris")
        assert record.spec["monitor"]["on_drift"] == {"pipeline": "iris-retrain"}
        now = time.time() + 5  # the servers' writer flushes off the request path
        deadline = time.monotonic() + 30
        while check.check_record(record, store, now=now).rows < 300:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        [first] = alerts.tick(now, store)
        assert (first.action, first.drifted) == ("fired", ["sepal_width"])
        assert alerts.tick(now + 1800, store)[0].action == "in-episode"
        [firing] = pdb.firings(store, "iris-retrain")
        assert firing.reason == "drift: endpoint iris: drifted sepal_width"
        run_id = firing.run_id or ""
    finally:
        store.close()
    assert pl.wait(run_id, timeout=60).state == "SUCCEEDED"
    shown = run([*MLCLOUD, "monitor", "iris", "--history", "-o", "json"])
    assert [c["action"] for c in json.loads(shown.stdout)] == ["in-episode", "fired"]
    text = run([*MLCLOUD, "monitor", "iris", "--history"]).stdout
    assert "fired" in text and "sepal_width" in text
