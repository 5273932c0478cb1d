"""metrics.json on Ray: the job runs on the test cluster (on this machine), writes its output
dir, and the record collects the file when the Jobs API reports the end."""

from __future__ import annotations

import json
from pathlib import Path

from mlcloud import tracking
from mlcloud.records import JobState
from tests.providers.ray.conftest import RayCluster
from tests.providers.ray.test_jobs import make_job, settle

TRAIN = """\
from mlcloud import runtime
runtime.log_params({"workers": 2})
runtime.log_metrics({"throughput": 120.5}, step=10)
"""


def test_metrics_collected_from_the_output_dir(ray_cluster: RayCluster, tmp_path: Path) -> None:
    provider = ray_cluster.provider()
    record = provider.submit_job(provider.plan_job(make_job(tmp_path, TRAIN)))
    done = settle(provider, record.id)
    assert done.state is JobState.SUCCEEDED, done.message
    path = Path(done.outputs["output_dir"]) / "metrics.json"
    assert json.loads(path.read_text())["params"] == {"workers": 2}  # what the job wrote
    assert done.outputs["metrics"] == str(path)
    assert tracking.job_metrics(done) == {"params": {"workers": 2},
                                          "metrics": {"throughput": 120.5}}  # fmt: skip
