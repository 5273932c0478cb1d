"""The in-job runtime contract: env helpers, model dirs, checkpoints, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlcloud import modeldir, runtime
from mlcloud.errors import ConfigError


def test_env_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCLOUD_MODEL_DIR", str(tmp_path / "m"))
    monkeypatch.setenv("MLCLOUD_INPUT_TRAIN", str(tmp_path))
    monkeypatch.setenv("MLCLOUD_HPARAMS", json.dumps({"lr": 0.1}))
    monkeypatch.delenv("MLCLOUD_CHECKPOINT_DIR", raising=False)
    assert runtime.model_dir() == tmp_path / "m" and (tmp_path / "m").is_dir()
    assert runtime.input_dir("train") == tmp_path
    with pytest.raises(KeyError, match="this job has: train"):
        runtime.input_dir("eval")
    assert runtime.hparams() == {"lr": 0.1}
    assert runtime.checkpoint_dir() is None and runtime.latest_checkpoint() is None
    assert runtime.world_size() == 1 and runtime.is_chief()
    for bad, why in (("[1, 2]", "must hold a JSON object"), ("{lr: 1", "not valid JSON")):
        monkeypatch.setenv("MLCLOUD_HPARAMS", bad)
        with pytest.raises(ConfigError, match=why):
            runtime.hparams()


def test_save_model_manifest_and_tamper_detection(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    root = runtime.save_model(model, framework="sklearn", path=tmp_path / "m", example=[[0.5]])
    manifest = modeldir.verify(root)
    assert manifest["framework"] == "sklearn" and manifest["entry"]["format"] == "skops"
    assert set(manifest["files"]) == {"model.skops"}
    (root / "model.skops").write_bytes(b"tampered")
    with pytest.raises(modeldir.ModelDirError, match="does not match"):
        modeldir.verify(root)


def test_checkpoints_atomic_and_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCLOUD_CHECKPOINT_DIR", str(tmp_path / "ck"))
    for step in (10, 20, 30):
        runtime.save_checkpoint({"step": step}, step)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["ckpt-00000020.pt", "ckpt-00000030.pt"]
    state, step = runtime.load_checkpoint()  # type: ignore[misc]
    assert step == 30 and state["step"] == 30


SIGTERM_SCRIPT = """
import time
from mlcloud import runtime
step = 0
def last():
    runtime.save_checkpoint({"step": step}, step)
    print("saved last checkpoint", flush=True)
runtime.on_sigterm(last)
print("ready", flush=True)
while True:
    step += 1
    time.sleep(0.01)
"""


def test_sigterm_writes_last_checkpoint(tmp_path: Path) -> None:
    env = {"MLCLOUD_CHECKPOINT_DIR": str(tmp_path / "ck"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_SCRIPT],
        env={**__import__("os").environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert "saved last checkpoint" in out
    assert proc.returncode == 128 + signal.SIGTERM
    assert runtime.latest_checkpoint is not None
    assert list((tmp_path / "ck").glob("ckpt-*.pt"))


VENDORED_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from mlcloud import errors, modeldir, runtime
src, out = Path(sys.argv[2]), Path(sys.argv[3])
root = runtime.save_model(str(src), framework="custom", path=out, predictor="pred:P")
(root / "pred.py").write_text("tampered")
try:
    modeldir.verify(root)
except errors.ModelError as e:
    print(type(e).__name__, isinstance(e, errors.MlcloudError), isinstance(e, ValueError))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("mlcloud", "yaml", "pydantic")))
"""


def test_vendored_runtime_works_without_mlcloud_installed(tmp_path: Path) -> None:
    # Cloud launchers ship runtime.py, modeldir.py and errors.py (modeldir's errors are in the
    # mlcloud tree) inside the job archive for images without mlcloud: they must import alone.
    from providers.common.staging import pack_source, safe_extract

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "pred.py").write_text("class P:\n    def predict(self, x): ...\n")
    safe_extract(pack_source(tmp_path / "src").data, tmp_path / "job")
    vendor = tmp_path / "job" / "_mlcloud" / "vendor"
    args = [str(vendor), str(tmp_path / "src"), str(tmp_path / "model")]
    # -S: no site-packages, so no installed mlcloud (nor yaml, pydantic) to fall back on
    out = subprocess.run([sys.executable, "-S", "-c", VENDORED_SCRIPT, *args],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    verdict, modules = out.stdout.splitlines()
    assert verdict == "ModelDirError True False"
    assert modules == "['mlcloud', 'mlcloud.errors', 'mlcloud.modeldir', 'mlcloud.runtime']"
