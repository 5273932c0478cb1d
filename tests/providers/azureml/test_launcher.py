"""The staged code and launcher under Azure ML's environment, in a temp layout.

Azure ML substitutes ``${{inputs.x}}`` / ``${{outputs.y}}`` in the command text and runs it
in a shell, with the PyTorch distribution's variables set on each node; this does the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlcloud.specs import TrainingJob
from providers.common import launcher
from providers.common.staging import write_source_dir
from tests.providers.azureml.conftest import write_source

PROBE = """\
import json, os
from mlcloud import runtime
print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("MLCLOUD_")}))
(runtime.model_dir() / "model.txt").write_text("ok")
"""


def _command(provider: Any, job: TrainingJob) -> str:
    plan = provider.plan_job(job)
    return str(plan.steps[0].request["properties"]["command"])


def test_planned_command_runs_in_azure_layout(provider: Any, tmp_path: Path) -> None:
    source = write_source(tmp_path / "src", PROBE)
    (tmp_path / "data").mkdir()
    job = TrainingJob(
        name="probe",
        source=str(source),
        command=[sys.executable, "train.py"],
        framework={"name": "sklearn", "version": "1.5"},
        inputs={"train": str(tmp_path / "data")},
        checkpoint="auto",
        hyperparameters={"lr": 0.5},
    )
    command = _command(provider, job)
    code = tmp_path / "code"
    names = write_source_dir(source, code)
    assert "_mlcloud/launcher.py" in names and "train.py" in names

    # what Azure ML mounts, and substitutes into the command text
    mounts = {
        "inputs.train": tmp_path / "mnt" / "train",
        "outputs.model": tmp_path / "mnt" / "model",
        "outputs.output": tmp_path / "mnt" / "output",
        "outputs.checkpoints": tmp_path / "mnt" / "checkpoints",
    }
    for key, path in mounts.items():
        path.mkdir(parents=True)
        command = command.replace("${{" + key + "}}", str(path))
    assert "${{" not in command
    env = {
        "PATH": os.environ["PATH"],
        "MLCLOUD_JOB_ID": "probe-000001",
        "MLCLOUD_PROVIDER_TYPE": "azureml",
        "MLCLOUD_HPARAMS": json.dumps(job.hyperparameters),
        "AZUREML_RUN_ID": "probe-000001",
    }
    done = subprocess.run(
        ["bash", "-c", command.replace("python _mlcloud", f"{sys.executable} _mlcloud", 1)],
        cwd=code, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["MLCLOUD_INPUT_TRAIN"] == str(mounts["inputs.train"])
    assert seen["MLCLOUD_MODEL_DIR"] == str(mounts["outputs.model"])
    assert seen["MLCLOUD_OUTPUT_DIR"] == str(mounts["outputs.output"])
    assert seen["MLCLOUD_CHECKPOINT_DIR"] == str(mounts["outputs.checkpoints"])
    assert seen["MLCLOUD_NUM_NODES"] == "1" and seen["MLCLOUD_NODE_RANK"] == "0"
    assert json.loads(seen["MLCLOUD_HPARAMS"]) == {"lr": 0.5}
    assert (mounts["outputs.model"] / "model.txt").read_text() == "ok"
    assert "platform=azureml" in done.stderr


def test_pytorch_distribution_runs_torchrun_per_node(provider: Any, tmp_path: Path) -> None:
    job = TrainingJob(
        name="ddp",
        source=str(write_source(tmp_path / "src")),
        command=["python", "train.py"],
        framework={"name": "pytorch", "version": "2.3"},
        nodes=2,
        procs_per_node=4,
    )
    argv = _command(provider, job).split(" ")[2:]  # after "python _mlcloud/launcher.py"
    args = launcher.parse_args([a.strip("'") for a in argv])
    # what Azure ML's PyTorch distribution sets on node 1 (process_count_per_instance=1)
    azure_env = {
        "AZUREML_NODE_COUNT": "2",
        "NODE_RANK": "1",
        "WORLD_SIZE": "2",
        "RANK": "1",
        "MASTER_ADDR": "10.0.0.4",
        "MASTER_PORT": "6105",
    }
    env = launcher.build_env(args, azure_env)
    assert env["MLCLOUD_NUM_NODES"] == "2" and env["MLCLOUD_NODE_RANK"] == "1"
    command = launcher.build_command(args, env)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=2" in command and "--node-rank=1" in command
    assert "--nproc-per-node=4" in command and "--master-addr=10.0.0.4" in command
    assert "--master-port=6105" in command
    assert command[-2:] == ["python", "train.py"]
