"""The plan's exact container command, run locally in a directory laid out like a SageMaker
training container (/opt/ml/... under a temp root, SageMaker's SM_* variables, the code
archive delivered in the ``mlcloud_code`` channel): the user's unchanged train.py sees the
MLCLOUD_* contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlcloud.specs import TrainingJob, validate_spec
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.job_plan import CODE_DIR, JobContext

TRAIN = """\
import json, os
from pathlib import Path
from typing import Any

import pytest
rows = (Path(os.environ["MLCLOUD_INPUT_TRAIN"]) / "rows.csv").read_text().splitlines()
seen = {k: v for k, v in os.environ.items() if k.startswith("MLCLOUD_") and "BOOTSTRAP" not in k}
seen["rows"] = len(rows)
Path(os.environ["MLCLOUD_MODEL_DIR"], "env.json").write_text(json.dumps(seen))
print("trained on", len(rows), "rows")
"""


CASES = [
    # A framework image: the SageMaker training toolkit also exports SM_* variables.
    ({"lr": 0.1, "layers": [2, 3], "name": "x"}, True),
    # Any other image: only /opt/ml files; hyperparameters too long for one environment value
    # travel only in hyperparameters.json.
    ({"lr": 0.1, "notes": "n" * 600}, False),
]


@pytest.mark.parametrize(("hparams", "toolkit"), CASES, ids=["toolkit-image", "bare-image"])
def test_plan_runs_in_a_sagemaker_layout(
    provider: SageMakerProvider, tmp_path: Path, hparams: dict[str, Any], toolkit: bool
) -> None:
    src, data = tmp_path / "src", tmp_path / "data"
    src.mkdir()
    data.mkdir()
    (src / "train.py").write_text(TRAIN)
    (data / "rows.csv").write_text("1,2\n3,4\n5,6\n")
    job = validate_spec(
        TrainingJob,
        {
            "name": "layout",
            "source": str(src),
            "command": [sys.executable, "train.py"],
            "inputs": {"train": str(data)},
            "hyperparameters": hparams,
        },
        "job",
    )
    plan = provider.plan_job(job)
    req = plan.steps[0].request

    # What SageMaker does before starting the container: download channels, write configs.
    ml = tmp_path / "root" / "opt" / "ml"
    code = ml / "input" / "data" / "mlcloud_code"
    code.mkdir(parents=True)
    archive = plan.context_as(JobContext).archive
    (code / f"{archive.sha256}.tar.gz").write_bytes(archive.data)
    channel = ml / "input" / "data" / "train"
    channel.mkdir(parents=True)
    (channel / "rows.csv").write_bytes((data / "rows.csv").read_bytes())
    config = ml / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(req["HyperParameters"]))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]})
    )
    channels = {c["ChannelName"]: {"TrainingInputMode": "File"} for c in req["InputDataConfig"]}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (ml / "model").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        **req["Environment"],
        "MLCLOUD_FS_ROOT": str(tmp_path / "root"),  # the launcher's /, for this test only
        "MLCLOUD_WORKDIR": str(tmp_path / "work"),
    }
    if toolkit:
        env |= {
            "SM_MODEL_DIR": str(ml / "model"),
            "SM_OUTPUT_DATA_DIR": str(ml / "output" / "data"),
            "SM_CHANNEL_TRAIN": str(channel),
            "SM_CHANNEL_MLCLOUD_CODE": str(code),
            "SM_HOSTS": '["algo-1"]',
            "SM_CURRENT_HOST": "algo-1",
        }
    spec = req["AlgorithmSpecification"]
    argv = [sys.executable] + [
        str(code) if a == CODE_DIR else a for a in spec["ContainerArguments"]
    ]
    assert spec["ContainerEntrypoint"] == ["python3"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trained on 3 rows" in done.stdout

    seen = json.loads((ml / "model" / "env.json").read_text())
    assert seen["MLCLOUD_JOB_ID"] == plan.id
    assert seen["MLCLOUD_PROVIDER_TYPE"] == "sagemaker"
    assert seen["MLCLOUD_MODEL_DIR"] == str(ml / "model")
    assert seen["MLCLOUD_INPUT_TRAIN"] == str(channel)
    assert "MLCLOUD_INPUT_MLCLOUD_CODE" not in seen
    assert ("MLCLOUD_HPARAMS" in req["Environment"]) is (len(json.dumps(hparams)) < 512)
    assert json.loads(seen["MLCLOUD_HPARAMS"]) == hparams
    assert seen["MLCLOUD_NUM_NODES"] == "1" and seen["MLCLOUD_NODE_RANK"] == "0"
    assert seen["rows"] == 3
