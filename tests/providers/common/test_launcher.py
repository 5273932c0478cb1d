"""The in-container launcher, run as a real subprocess against each platform's layout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from providers.common import launcher
from tests.providers.common.helpers import (
    LAUNCHER,
    SECRET,
    clean_env,
    free_port,
    read_dump,
    sagemaker_layout,
    write_dump_script,
)


def run_launcher(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dump_run(
    tmp_path: Path, platform: str, env: dict[str, str], extra: list[str] | None = None
) -> tuple[dict[str, object], str]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    script = write_dump_script(tmp_path / "code")
    args = ["--platform", platform, *(extra or []), "--", sys.executable, str(script), str(out)]
    result = run_launcher(args, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr + result.stdout
    return read_dump(out), result.stderr


# ---- SageMaker ------------------------------------------------------------------------------
def test_sagemaker_container_contract(tmp_path: Path) -> None:
    root = sagemaker_layout(tmp_path / "root", ["algo-1"], "algo-1")
    env = clean_env(MLCLOUD_FS_ROOT=str(root), MLCLOUD_JOB_ID="iris-1234")
    dumped, stderr = dump_run(tmp_path, "sagemaker", env)
    ml = root / "opt/ml"
    assert dumped["MLCLOUD_MODEL_DIR"] == str(ml / "model")
    assert dumped["MLCLOUD_OUTPUT_DIR"] == str(ml / "output/data")
    assert dumped["MLCLOUD_CHECKPOINT_DIR"] == str(ml / "checkpoints")
    assert dumped["MLCLOUD_INPUT_TRAIN"] == str(ml / "input/data/train")
    assert "MLCLOUD_INPUT_MLCLOUD_CODE" not in dumped
    assert dumped["hparams"] == {
        "lr": 0.01,
        "epochs": 5,
        "name": "resnet",
        "raw": "abc",
        "flag": True,
    }
    assert (dumped["MLCLOUD_NUM_NODES"], dumped["MLCLOUD_NODE_RANK"]) == ("1", "0")
    assert dumped["MLCLOUD_PROVIDER_TYPE"] == "sagemaker"
    assert dumped["MLCLOUD_JOB_ID"] == "iris-1234"  # the provider's own values are kept
    # mlcloud is installed here, so the installed runtime is used, not the vendored copy.
    assert "_mlcloud" not in str(dumped["runtime_file"])
    assert "[mlcloud] platform=sagemaker node_rank=0 num_nodes=1" in stderr


def test_sagemaker_toolkit_env_and_provider_hparams(tmp_path: Path) -> None:
    env = clean_env(
        MLCLOUD_FS_ROOT=str(tmp_path / "empty"),
        SM_MODEL_DIR="/opt/ml/model",
        SM_OUTPUT_DATA_DIR="/opt/ml/output/data",
        SM_CHANNEL_TRAIN="/opt/ml/input/data/train",
        SM_CHANNEL_MLCLOUD_CODE="/opt/ml/input/data/mlcloud_code",
        SM_CHANNELS='["train", "mlcloud_code"]',
        SM_HPS='{"lr": 0.5}',
        SM_HOSTS='["algo-1"]',
        SM_CURRENT_HOST="algo-1",
        MLCLOUD_HPARAMS='{"lr": 0.1, "layers": [1, 2]}',
        MLCLOUD_CHECKPOINT="1",
    )
    dumped, _ = dump_run(tmp_path, "sagemaker", env)
    assert dumped["MLCLOUD_MODEL_DIR"] == "/opt/ml/model"
    assert dumped["MLCLOUD_INPUT_TRAIN"] == "/opt/ml/input/data/train"
    assert "MLCLOUD_INPUT_MLCLOUD_CODE" not in dumped and "MLCLOUD_INPUT_S" not in dumped
    assert dumped["hparams"] == {"lr": 0.1, "layers": [1, 2]}  # the provider's JSON wins
    assert dumped["MLCLOUD_CHECKPOINT_DIR"] == str(tmp_path / "empty/opt/ml/checkpoints")


def test_sagemaker_multi_host_mapping(tmp_path: Path) -> None:
    env = {"SM_HOSTS": '["algo-3", "algo-1", "algo-2"]', "SM_CURRENT_HOST": "algo-2"}
    mapped = launcher.env_for_sagemaker(env, tmp_path)
    assert (mapped["MLCLOUD_NUM_NODES"], mapped["MLCLOUD_NODE_RANK"]) == ("3", "1")
    assert mapped["MASTER_ADDR"] == "algo-1"
    assert "MLCLOUD_CHECKPOINT_DIR" not in mapped  # no checkpoint dir, none asked for

    sagemaker_layout(tmp_path, ["algo-2", "algo-1"], "algo-1")
    mapped = launcher.env_for_sagemaker({"SM_HPS": '{"lr": "1e-3"}'}, tmp_path)
    assert (mapped["MLCLOUD_NUM_NODES"], mapped["MLCLOUD_NODE_RANK"]) == ("2", "0")
    assert json.loads(mapped["MLCLOUD_HPARAMS"]) == {"lr": 0.001}


# ---- Vertex AI ------------------------------------------------------------------------------
def test_vertex_container_contract(tmp_path: Path) -> None:
    root = tmp_path / "root"
    spec = {
        "cluster": {"workerpool0": ["cmle-training-workerpool0-ab12-0:2222"]},
        "environment": "cloud",
        "task": {"type": "workerpool0", "index": 0},
    }
    env = clean_env(
        MLCLOUD_FS_ROOT=str(root),
        AIP_MODEL_DIR="gs://bkt/jobs/j1/model/",
        AIP_CHECKPOINT_DIR="gs://bkt/jobs/j1/checkpoints/",
        AIP_TENSORBOARD_LOG_DIR="gs://bkt/tb/j1",
        MLCLOUD_INPUT_TRAIN="gs://data/iris/train",
        MLCLOUD_INPUT_LOCAL="/already/local",
        MLCLOUD_HPARAMS='{"lr": 0.01}',
        CLUSTER_SPEC=json.dumps(spec),
    )
    dumped, stderr = dump_run(tmp_path, "vertex", env)
    gcs = root / "gcs"
    assert dumped["MLCLOUD_MODEL_DIR"] == str(gcs / "bkt/jobs/j1/model")
    # Vertex sets AIP_CHECKPOINT_DIR for every job: none was configured, so none is given.
    assert "MLCLOUD_CHECKPOINT_DIR" not in dumped
    assert dumped["MLCLOUD_OUTPUT_DIR"] == str(gcs / "bkt/tb/j1")
    assert dumped["MLCLOUD_INPUT_TRAIN"] == str(gcs / "data/iris/train")
    assert dumped["MLCLOUD_INPUT_LOCAL"] == "/already/local"
    assert dumped["hparams"] == {"lr": 0.01}
    assert (dumped["MLCLOUD_NUM_NODES"], dumped["MLCLOUD_NODE_RANK"]) == ("1", "0")
    assert dumped["MASTER_ADDR"] == "cmle-training-workerpool0-ab12-0"
    assert "platform=vertex" in stderr


def test_vertex_cluster_spec_ranks(tmp_path: Path) -> None:
    cluster = {
        "workerpool0": ["chief:2222"],
        "workerpool1": ["w0:2222", "w1:2222", "w2:2222"],
    }
    for task, rank in ((("workerpool0", 0), 0), (("workerpool1", 0), 1), (("workerpool1", 2), 3)):
        spec = {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}
        mapped = launcher.env_for_vertex({"CLUSTER_SPEC": json.dumps(spec)}, tmp_path)
        assert mapped["MLCLOUD_NUM_NODES"] == "4"
        assert mapped["MLCLOUD_NODE_RANK"] == str(rank)
        assert mapped["MASTER_ADDR"] == "chief"
    # Vertex's own MASTER_* (PyTorch containers) win; an explicit output beats TensorBoard's.
    spec = {"cluster": cluster, "task": {"type": "workerpool1", "index": 1}}
    mapped = launcher.env_for_vertex(
        {
            "CLUSTER_SPEC": json.dumps(spec),
            "MASTER_ADDR": "10.0.0.2",
            "MASTER_PORT": "1234",
            "AIP_TENSORBOARD_LOG_DIR": "gs://b/tb",
            "MLCLOUD_OUTPUT_DIR": "gs://b/out",
        },
        Path("/"),
    )
    assert (mapped["MASTER_ADDR"], mapped["MASTER_PORT"]) == ("10.0.0.2", "1234")
    assert mapped["MLCLOUD_OUTPUT_DIR"] == "/gcs/b/out"


# ---- Azure ML -------------------------------------------------------------------------------
def test_azureml_container_contract(tmp_path: Path) -> None:
    mnt = "/mnt/azureml/cr/j/abc/cap/data-capability/wd"
    env = clean_env(
        AZURE_ML_INPUT_train=f"{mnt}/INPUT_train",
        AZURE_ML_INPUT_Val=f"{mnt}/INPUT_val",
        AZURE_ML_OUTPUT_model=f"{mnt}/model",
        AZURE_ML_OUTPUT_checkpoints=f"{mnt}/checkpoints",
        AZURE_ML_OUTPUT_extra=f"{mnt}/extra",
        AZUREML_NODE_COUNT="1",
        NODE_RANK="0",
        MASTER_ADDR="10.0.0.4",
        MASTER_PORT="6105",
        MLCLOUD_HPARAMS='{"epochs": 3}',
    )
    # Command-line substitutions (${{outputs.output}}) arrive as --output flags.
    dumped, _ = dump_run(
        tmp_path, "azureml", env, ["--output", f"output={mnt}/output", "--input", "test=/t"]
    )
    assert dumped["MLCLOUD_INPUT_TRAIN"] == f"{mnt}/INPUT_train"
    assert dumped["MLCLOUD_INPUT_VAL"] == f"{mnt}/INPUT_val"
    assert dumped["MLCLOUD_INPUT_TEST"] == "/t"
    assert dumped["MLCLOUD_MODEL_DIR"] == f"{mnt}/model"
    assert dumped["MLCLOUD_OUTPUT_DIR"] == f"{mnt}/output"
    assert dumped["MLCLOUD_CHECKPOINT_DIR"] == f"{mnt}/checkpoints"
    assert dumped["hparams"] == {"epochs": 3}
    assert (dumped["MLCLOUD_NUM_NODES"], dumped["MLCLOUD_NODE_RANK"]) == ("1", "0")


def test_azureml_distribution_mapping() -> None:
    mapped = launcher.env_for_azureml(
        {
            "AZUREML_NODE_COUNT": "4",
            "NODE_RANK": "2",
            "MASTER_ADDR": "10.0.0.4",
            "MASTER_PORT": "6105",
        }
    )
    assert (mapped["MLCLOUD_NUM_NODES"], mapped["MLCLOUD_NODE_RANK"]) == ("4", "2")
    assert (mapped["MASTER_ADDR"], mapped["MASTER_PORT"]) == ("10.0.0.4", "6105")
    # Older images: the Batch variables only.
    mapped = launcher.env_for_azureml(
        {
            "AZUREML_NODE_COUNT": "2",
            "AZ_BATCHAI_TASK_INDEX": "1",
            "AZ_BATCH_MASTER_NODE": "10.0.0.5:6105",
        }
    )
    assert (mapped["MLCLOUD_NODE_RANK"], mapped["MASTER_ADDR"], mapped["MASTER_PORT"]) == (
        "1",
        "10.0.0.5",
        "6105",
    )
    # One process per node: WORLD_SIZE and RANK count nodes.
    mapped = launcher.env_for_azureml({"WORLD_SIZE": "3", "RANK": "2"})
    assert (mapped["MLCLOUD_NUM_NODES"], mapped["MLCLOUD_NODE_RANK"]) == ("3", "2")


# ---- the launch itself ----------------------------------------------------------------------
def test_build_command_uses_static_torchrun() -> None:
    args = launcher.parse_args(
        ["--platform", "local", "--nproc-per-node", "4", "--", "python", "t.py"]
    )
    env = launcher.build_env(
        args, {"MLCLOUD_NUM_NODES": "2", "MLCLOUD_NODE_RANK": "1", "MASTER_ADDR": "h0"}
    )
    command = launcher.build_command(args, env)
    assert command[1:3] == ["-m", "torch.distributed.run"]
    assert "--nnodes=2" in command and "--node-rank=1" in command
    assert "--nproc-per-node=4" in command and "--master-addr=h0" in command
    assert "--master-port=29500" in command
    assert command[-3:] == ["--", "python", "t.py"]
    single = launcher.parse_args(["--platform", "local", "--", "python", "t.py"])
    assert launcher.build_command(single, launcher.build_env(single, {})) == ["python", "t.py"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--platform", "local"],
        ["--platform", "mars", "--", "true"],
        ["--"],
        ["--nproc-per-node", "two", "--", "true"],
        ["--input", "novalue", "--", "true"],
        ["--bogus", "1", "--", "true"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match="mlcloud launcher"):
        launcher.parse_args(argv)


def test_usage_error_exit_status(tmp_path: Path) -> None:
    result = run_launcher(["--platform", "local"], clean_env(), tmp_path)
    assert result.returncode == 1 and "mlcloud launcher: usage" in result.stderr


def test_exit_code_and_missing_command(tmp_path: Path) -> None:
    code = "import sys; sys.exit(7)"
    result = run_launcher(
        ["--platform", "local", "--", sys.executable, "-c", code], clean_env(), tmp_path
    )
    assert result.returncode == 7
    result = run_launcher(["--platform", "local", "--", "no-such-cmd-xyz"], clean_env(), tmp_path)
    assert result.returncode == 127


SIGTERM_JOB = """\
import pathlib, sys, time
from mlcloud import runtime
out = pathlib.Path(sys.argv[1])
runtime.on_sigterm(lambda: (out / "checkpointed").write_text("yes"))
(out / "ready").write_text("")
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    time.sleep(0.05)
"""

STUBBORN_JOB = """\
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1], "ready").write_text("")
time.sleep(30)
"""


def start_and_term(tmp_path: Path, job: str, env: dict[str, str]) -> tuple[int, float]:
    (tmp_path / "job.py").write_text(job)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(LAUNCHER),
            "--platform",
            "local",
            "--",
            sys.executable,
            str(tmp_path / "job.py"),
            str(tmp_path),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "job never started"
            time.sleep(0.05)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        return code, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_reaches_the_jobs_handler(tmp_path: Path) -> None:
    code, _ = start_and_term(tmp_path, SIGTERM_JOB, clean_env())
    assert code == 143
    assert (tmp_path / "checkpointed").read_text() == "yes"


def test_sigkill_after_grace(tmp_path: Path) -> None:
    code, took = start_and_term(tmp_path, STUBBORN_JOB, clean_env(MLCLOUD_GRACE_SECONDS="1"))
    assert code == 128 + signal.SIGKILL
    assert 0.9 < took < 10


@pytest.mark.slow
def test_two_ranks_via_torchrun(tmp_path: Path) -> None:
    """--nproc-per-node 2 starts two real ranks under torch.distributed.run (static rendezvous).

    The workers only dump their environment: importing torch in each would triple the cost on a
    2-core runner, and rank-to-rank traffic is torch's business, not the launcher's.
    """
    out = tmp_path / "out"
    out.mkdir()
    script = write_dump_script(tmp_path / "code")
    port = str(free_port())
    args = ["--platform", "local", "--nproc-per-node", "2", "--master-port", port]
    started = time.monotonic()
    result = run_launcher(
        [*args, "--", sys.executable, str(script), str(out)], clean_env(), tmp_path
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [read_dump(out, r) for r in ("0", "1")]
    assert [r["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    for dumped in ranks:
        assert dumped["WORLD_SIZE"] == "2" and dumped["MASTER_PORT"] == port
        assert dumped["MLCLOUD_NUM_NODES"] == "1" and dumped["MLCLOUD_NODE_RANK"] == "0"
    assert "nproc_per_node=2" in result.stderr
    # ~5 s idle, ~13 s at load 7 on 2 cores (one torch import, in torchrun); a loose tripwire.
    assert took < 45, f"2-rank launch took {took:.1f}s"


@pytest.mark.slow
def test_two_sagemaker_hosts_rendezvous(tmp_path: Path) -> None:
    """Two launchers as two SageMaker hosts: ranks from the sorted host list, static rendezvous."""
    out = tmp_path / "out"
    out.mkdir()
    script = write_dump_script(tmp_path / "code")
    hosts = '["localhost", "127.0.0.1"]'  # sorted: 127.0.0.1 (rank 0, the master), localhost
    port = str(free_port())
    procs = []
    for host in ("localhost", "127.0.0.1"):
        env = clean_env(
            MLCLOUD_FS_ROOT=str(tmp_path / "root"),
            SM_HOSTS=hosts,
            SM_CURRENT_HOST=host,
            SM_HPS='{"lr": 0.1}',
        )
        argv = ["--platform", "sagemaker", "--master-port", port, "--"]
        procs.append(
            subprocess.Popen(
                [sys.executable, str(LAUNCHER), *argv, sys.executable, str(script), str(out)],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        results = [(p.wait(timeout=90), p.stderr.read() if p.stderr else "") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [code for code, _ in results] == [0, 0], [err[-2000:] for _, err in results]
    ranks = {r: read_dump(out, r) for r in ("0", "1")}
    assert ranks["0"]["MLCLOUD_NODE_RANK"] == "0" and ranks["1"]["MLCLOUD_NODE_RANK"] == "1"
    for dumped in ranks.values():
        assert dumped["WORLD_SIZE"] == "2" and dumped["MLCLOUD_NUM_NODES"] == "2"
        assert dumped["MASTER_ADDR"] == "127.0.0.1" and dumped["MASTER_PORT"] == port
        assert dumped["hparams"] == {"lr": 0.1}
    assert "node_rank=1 num_nodes=2" in results[0][1]


def test_vertex_explicit_checkpoint_wins_over_aip(tmp_path: Path) -> None:
    """``checkpoint: gs://other/ckpts`` is passed as MLCLOUD_CHECKPOINT_DIR; Vertex's own
    AIP_CHECKPOINT_DIR (under the job's output) must not replace it (issue 10, item 7)."""
    mapped = launcher.env_for_vertex(
        {
            "AIP_CHECKPOINT_DIR": "gs://bkt/jobs/j1/checkpoints/",
            "AIP_MODEL_DIR": "gs://bkt/jobs/j1/model/",
            "MLCLOUD_CHECKPOINT_DIR": "gs://other-bucket/ckpts",
            "MLCLOUD_MODEL_DIR": "gs://mine/model",
        },
        Path("/"),
    )
    assert mapped["MLCLOUD_CHECKPOINT_DIR"] == "/gcs/other-bucket/ckpts"
    assert mapped["MLCLOUD_MODEL_DIR"] == "/gcs/mine/model"


def test_vertex_two_replicas_rendezvous_on_the_cluster_spec_port(tmp_path: Path) -> None:
    """Vertex replicas are service names exposing only CLUSTER_SPEC's port (issue 10, item 6):
    torchrun must rendezvous there, not on 29500, on every replica."""
    cluster = {
        "workerpool0": ["cmle-training-workerpool0-ab12-0:2222"],
        "workerpool1": ["cmle-training-workerpool1-ab12-0:2222"],
    }
    for task, rank in (("workerpool0", "0"), ("workerpool1", "1")):
        spec = {"cluster": cluster, "environment": "cloud", "task": {"type": task, "index": 0}}
        env = launcher.build_env(
            launcher.parse_args(["--platform", "vertex", "--", "python", "train.py"]),
            {"CLUSTER_SPEC": json.dumps(spec)},
            tmp_path,
        )
        argv = launcher.build_command(
            launcher.parse_args(["--platform", "vertex", "--", "python", "train.py"]), env
        )
        assert "--master-addr=cmle-training-workerpool0-ab12-0" in argv
        assert "--master-port=2222" in argv
        assert (f"--node-rank={rank}", "--nnodes=2") == (argv[4], argv[3])
