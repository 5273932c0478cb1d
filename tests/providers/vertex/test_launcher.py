"""The container command of a submitted CustomJob, run here in a temp layout of a Vertex node
(see ``conftest.run_on_node``): the job sees the MLCLOUD_* contract built from AIP_* variables
and reads its staged input through the Cloud Storage FUSE path."""

from __future__ import annotations

import json
from pathlib import Path

from mlcloud.specs import TrainingJob
from providers.vertex import VertexProvider
from tests.fakes.vertex import FakeVertex
from tests.providers.vertex.conftest import run_on_node

TRAIN = """import json, os, pathlib
env = {k: v for k, v in os.environ.items() if k.startswith("MLCLOUD_") or k == "MASTER_ADDR"}
env["data"] = (pathlib.Path(env["MLCLOUD_INPUT_TRAIN"]) / "rows.csv").read_text()
print("RESULT " + json.dumps(env))
"""


def test_job_command_runs_with_vertex_env(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    data.mkdir()
    (src / "train.py").write_text(TRAIN)
    (data / "rows.csv").write_text("1,2,3\n")
    job = TrainingJob(
        name="launch",
        source=str(src),
        command=["python", "train.py"],
        image="python:3.11",
        inputs={"train": str(data)},
        checkpoint="auto",
        hyperparameters={"lr": 0.1},
    )
    record = provider.submit_job(provider.plan_job(job))
    root = tmp_path / "node"
    out = run_on_node(fake, record.native_id or "", root)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    seen = json.loads(line.removeprefix("RESULT "))
    fuse = f"{root}/gcs/mlcloud-staging/mlcloud/jobs/{record.id}"
    assert seen["MLCLOUD_MODEL_DIR"].rstrip("/") == f"{fuse}/model"
    assert seen["MLCLOUD_CHECKPOINT_DIR"].rstrip("/") == f"{fuse}/checkpoints"
    assert seen["MLCLOUD_OUTPUT_DIR"] == f"{fuse}/output"
    assert seen["data"] == "1,2,3\n", "the staged input is read through the mount"
    assert seen["MLCLOUD_JOB_ID"] == record.id and seen["MLCLOUD_PROVIDER_TYPE"] == "vertex"
    assert json.loads(seen["MLCLOUD_HPARAMS"]) == {"lr": 0.1}
    assert (seen["MLCLOUD_NUM_NODES"], seen["MLCLOUD_NODE_RANK"]) == ("1", "0")
