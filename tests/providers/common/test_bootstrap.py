"""The container command end to end: archive on disk → bootstrap → launcher → the user's command."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

import pytest

from providers.common.bootstrap import BOOTSTRAP_SRC, bootstrap_argv, launcher_argv
from providers.common.staging import pack_source
from tests.providers.common.helpers import (
    clean_env,
    read_dump,
    sagemaker_layout,
    write_dump_script,
)


def stage(tmp_path: Path) -> Path:
    """Pack a tiny source and deliver it like a SageMaker input channel: one file in a dir."""
    src = tmp_path / "src"
    write_dump_script(src)
    (src / "notes.txt").write_text("not code\n")
    archive = pack_source(src)
    channel = tmp_path / "root/opt/ml/input/data/mlcloud_code"
    channel.mkdir(parents=True)
    (channel / f"{archive.sha256}.tar.gz").write_bytes(archive.data)
    return channel


def run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd matters: `python -c` puts it on sys.path, and the repo root holds mlcloud/.
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_argv_shape() -> None:
    argv = bootstrap_argv(
        "/opt/ml/input/data/mlcloud_code",
        platform="sagemaker",
        command=["python", "train.py", "--epochs", "5"],
        nproc_per_node=2,
        distributed=True,
    )
    assert argv[:3] == ["python3", "-c", BOOTSTRAP_SRC]
    assert argv[3:] == [
        "/opt/ml/input/data/mlcloud_code",
        "--platform",
        "sagemaker",
        "--nproc-per-node",
        "2",
        "--distributed",
        "--",
        "python",
        "train.py",
        "--epochs",
        "5",
    ]
    assert len(BOOTSTRAP_SRC) < 1200  # shown in every plan
    assert launcher_argv(
        platform="azureml", command=["python", "t.py"], outputs={"model": "/m"}
    ) == [
        "python3",
        "_mlcloud/launcher.py",
        "--platform",
        "azureml",
        "--output",
        "model=/m",
        "--",
        "python",
        "t.py",
    ]


def test_bootstrap_end_to_end(tmp_path: Path) -> None:
    channel = stage(tmp_path)
    sagemaker_layout(tmp_path / "root", ["algo-1"], "algo-1")
    out = tmp_path / "out"
    out.mkdir()
    argv = bootstrap_argv(
        str(channel), platform="sagemaker", command=[sys.executable, "dump_env.py", str(out)]
    )
    argv[0] = sys.executable
    work = tmp_path / "work"
    env = clean_env(MLCLOUD_WORKDIR=str(work), MLCLOUD_FS_ROOT=str(tmp_path / "root"))
    result = run(argv, env, tmp_path)
    assert result.returncode == 0, result.stderr
    dumped = read_dump(out)
    assert dumped["cwd"] == str(work.resolve())
    assert (work / "notes.txt").read_text() == "not code\n"
    assert dumped["MLCLOUD_MODEL_DIR"] == str(tmp_path / "root/opt/ml/model")
    assert dumped["MLCLOUD_INPUT_TRAIN"] == str(tmp_path / "root/opt/ml/input/data/train")
    assert dumped["hparams"]["epochs"] == 5  # type: ignore[index]
    assert dumped["MLCLOUD_PROVIDER_TYPE"] == "sagemaker"


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Python with the standard library only, like a training image without mlcloud."""
    target = tmp_path_factory.mktemp("bare") / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(target)
    return str(target / "bin" / "python")


def test_vendored_runtime_in_image_without_mlcloud(tmp_path: Path, bare_python: str) -> None:
    probe = run([bare_python, "-c", "import mlcloud"], clean_env(), tmp_path)
    assert probe.returncode != 0, "the bare venv must not see mlcloud"
    archive = pack_source(write_dump_script(tmp_path / "src").parent)
    path = tmp_path / "code.tar.gz"  # a plain file, as Vertex reads it through /gcs/
    path.write_bytes(archive.data)
    out = tmp_path / "out"
    out.mkdir()
    argv = bootstrap_argv(
        str(path),
        platform="local",
        command=[bare_python, "dump_env.py", str(out)],
        python=bare_python,
    )
    env = clean_env(
        MLCLOUD_WORKDIR=str(tmp_path / "work"),
        MLCLOUD_HPARAMS='{"lr": 0.1}',
        PYTHONPATH="/some/where",
    )
    env.pop("PYTHONHOME", None)
    result = run(argv, env, tmp_path)
    assert result.returncode == 0, result.stderr
    dumped = read_dump(out)
    vendor = tmp_path / "work" / "_mlcloud" / "vendor"
    assert dumped["runtime_file"] == str(vendor.resolve() / "mlcloud" / "runtime.py")
    assert dumped["PYTHONPATH"] == os.pathsep.join(["/some/where", str(vendor.resolve())])
    assert dumped["hparams"] == {"lr": 0.1}


def crafted(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        if name == "symlink":
            info = tarfile.TarInfo("link")
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


@pytest.mark.parametrize("member", ["../evil.py", "/tmp/evil.py", "symlink"])
def test_bootstrap_refuses_unsafe_archive(tmp_path: Path, member: str) -> None:
    path = tmp_path / "code.tar.gz"
    path.write_bytes(crafted(member))
    work = tmp_path / "work"
    argv = bootstrap_argv(str(path), platform="local", command=["true"], python=sys.executable)
    result = run(argv, clean_env(MLCLOUD_WORKDIR=str(work)), tmp_path)
    assert result.returncode == 1
    assert "unsafe archive member" in result.stderr
    assert list(work.iterdir()) == []  # checked before anything was written
    assert not (tmp_path / "evil.py").exists()


def test_bootstrap_wants_exactly_one_archive(tmp_path: Path) -> None:
    (tmp_path / "a.tar.gz").write_bytes(crafted("b.txt"))
    (tmp_path / "b.tar.gz").write_bytes(crafted("b.txt"))
    argv = bootstrap_argv(str(tmp_path), platform="local", command=["true"], python=sys.executable)
    result = run(argv, clean_env(), tmp_path)
    assert result.returncode == 1 and "want one .tar.gz" in result.stderr


def test_default_workdir_and_sigterm_reaches_launcher(tmp_path: Path) -> None:
    """execv keeps the pid, so the platform's SIGTERM lands on the launcher, which forwards it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "job.py").write_text(
        "import os, pathlib, signal, sys, time\n"
        "def bye(signum, frame):\n"
        "    pathlib.Path(sys.argv[1], 'handled').write_text(os.getcwd())\n"
        "    sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "pathlib.Path(sys.argv[1], 'ready').write_text('')\n"
        "time.sleep(30)\n"
    )
    path = tmp_path / "code.tar.gz"
    path.write_bytes(pack_source(src).data)
    (tmp_path / "tmp").mkdir()
    argv = bootstrap_argv(
        str(path),
        platform="local",
        command=[sys.executable, "job.py", str(tmp_path)],
        python=sys.executable,
    )
    proc = subprocess.Popen(
        argv, env=clean_env(TMPDIR=str(tmp_path / "tmp")), stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(600):
            if (tmp_path / "ready").exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.terminate()
        assert proc.wait(timeout=30) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workdir = Path((tmp_path / "handled").read_text())
    assert workdir.parent == (tmp_path / "tmp").resolve() and workdir.name.startswith("mlcloud-")


def oldest_python() -> str | None:
    """A working Python 3.8 if this machine has one (training images often ship an old one)."""
    candidates = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python"))]
    candidates.append(shutil.which("python3.8") or "")
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if probe.returncode == 0 and "3.8" in probe.stdout:
            return candidate
    return None


def test_bootstrap_and_launcher_on_python38(tmp_path: Path) -> None:
    python = oldest_python()
    if python is None:
        pytest.skip("no Python 3.8 on this machine")
    src = tmp_path / "src"
    write_dump_script(src)
    path = tmp_path / "code.tar.gz"
    path.write_bytes(pack_source(src).data)
    out = tmp_path / "out"
    out.mkdir()
    argv = bootstrap_argv(
        str(path), platform="sagemaker", command=[python, "dump_env.py", str(out)], python=python
    )
    env = clean_env(MLCLOUD_WORKDIR=str(tmp_path / "work"), MLCLOUD_FS_ROOT=str(tmp_path))
    env = {k: v for k, v in env.items() if not k.startswith("PYENV")}
    result = run(argv, env, tmp_path)
    assert result.returncode == 0, result.stderr
    dumped = read_dump(out)
    assert dumped["MLCLOUD_MODEL_DIR"] == str(tmp_path / "opt/ml/model")
    assert "_mlcloud/vendor" in str(dumped["runtime_file"])
