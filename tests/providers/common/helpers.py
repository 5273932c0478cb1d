"""Shared by the launcher/bootstrap tests: a script that dumps its environment, a free port."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[3] / "providers" / "common" / "launcher.py"

DUMP_SCRIPT = """\
import json, os, sys
from mlcloud import runtime
env = {k: v for k, v in os.environ.items() if k.startswith(("MLCLOUD_", "MASTER_", "RANK",
       "WORLD_SIZE", "LOCAL_RANK", "PYTHONPATH"))}
env["runtime_file"] = runtime.__file__
env["hparams"] = runtime.hparams()
env["cwd"] = os.getcwd()
name = "env-%s.json" % os.environ.get("RANK", "x")
with open(os.path.join(sys.argv[1], name), "w") as fh:
    json.dump(env, fh)
"""


def write_dump_script(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "dump_env.py"
    path.write_text(DUMP_SCRIPT)
    return path


def read_dump(folder: Path, rank: str = "x") -> dict[str, object]:
    return json.loads((folder / f"env-{rank}.json").read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SECRET = "s3cr3t-value-never-printed"


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus anything a platform mapping would read."""
    prefixes = ("MLCLOUD_", "SM_", "AIP_", "AZURE_ML_", "AZ_BATCH", "MASTER_", "CLUSTER_SPEC")
    drop = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "AZUREML_NODE_COUNT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in drop}
    env["AWS_SECRET_ACCESS_KEY"] = SECRET
    env.update(extra)
    return env


def sagemaker_layout(root: Path, hosts: list[str], current: str) -> Path:
    config = root / "opt/ml/input/config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(
        json.dumps({"lr": "0.01", "epochs": "5", "name": '"resnet"', "raw": "abc", "flag": "true"})
    )
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": current, "hosts": hosts, "network_interface_name": "eth0"})
    )
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "File"}, "mlcloud_code": {}})
    )
    for channel in ("train", "mlcloud_code"):
        (root / "opt/ml/input/data" / channel).mkdir(parents=True, exist_ok=True)
    (root / "opt/ml/checkpoints").mkdir(parents=True, exist_ok=True)
    return root
