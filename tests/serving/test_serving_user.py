"""Issue 10, item 4, as in a container: the serving user switch of ``serving/entrypoint.py``.

The image starts as root and has a ``bentoml`` user (BentoML's base image: uid 1034). This test
makes a Linux mount + network + PID namespace look like that image: a ``bentoml`` user bind-
mounted into /etc/passwd and /etc/group, a fresh /home/bentoml, a network of its own (so
SageMaker's fixed port 8080 is the contract's, not the test machine's), the interpreter's
directory traversable as it is under /usr/local in the image. Then each cloud's model mount, with
the platform's ownership, and the image's ENTRYPOINT started the way the cloud starts it:

* SageMaker: ``serve``, nothing in the environment but the image's own; /opt/ml/model extracted
  from model.tar.gz by root (0700 dirs, 0600 files). The server must stay root (uid 0).
* Azure ML: AZUREML_MODEL_DIR with the model one folder down, a read-only world-readable mount
  owned by another uid. The server must drop to ``bentoml`` (uid 1034).
* Vertex AI: AIP_* with a ``gs://`` AIP_STORAGE_URI served by a GCS fake (inside the namespace),
  the model one folder down in the bucket. The entrypoint downloads it as root into the image's
  /tmp, hands it over and drops to ``bentoml`` (this caught mkdtemp's 0700 dir left root's).

Asserted from inside the namespace: the real uid of the serving process and of every process it
started (``/proc/<pid>/status``), and a predict answered by each. The namespace's PID 1 is the
setup script: when it ends, the kernel ends every server with it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.serving.conftest import IRIS_ROW, REPO

BENTOML_UID = 1034  # BentoML's base images create the bentoml user with this uid
PLATFORM_UID = 4242  # the owner Azure ML's mount shows (not a user of the image)
TIMEOUT = 240.0
VERTEX_BASE = "/v1/endpoints/1234/deployedModels/5678"
# name -> (port, readiness route, predict route); Vertex's port is its AIP_HTTP_PORT (8081
# here: the namespace's 8080 is SageMaker's)
ROUTES = {
    "sagemaker": (8080, "/ping", "/invocations"),
    "azureml": (5001, "/health", "/score"),
    "vertex": (8081, VERTEX_BASE, f"{VERTEX_BASE}:predict"),
}
UNSHARE = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]

# Runs as PID 1 of the namespace, as root; $W is the work dir, $HIDE/$KEEP the interpreter fix.
SETUP = r"""
set -eu
mount --make-rprivate /
ip link set lo up
if [ -n "$HIDE" ]; then  # the interpreter lives under a 0700 dir here, /usr/local in the image
    mkdir -p "$W/keep"; mount --bind "$KEEP" "$W/keep"
    mount -t tmpfs -o mode=0755 tmpfs "$HIDE"; mkdir -p "$KEEP"; mount --bind "$W/keep" "$KEEP"
fi
# the checkout and the interpreter may live under a dir the image's view covers (a clone in
# /tmp, a venv in /home): set them aside now, put them back at the same path below
mount -t tmpfs -o mode=0755 tmpfs "$HOLD"
i=0
for path in $KEEP_PATHS; do
    i=$((i + 1)); mkdir -p "$HOLD/$i"; mount --bind "$path" "$HOLD/$i"
done
mount --bind "$W/passwd" /etc/passwd
mount --bind "$W/group" /etc/group
mount -t tmpfs -o mode=0755 tmpfs /home
mkdir -p /home/bentoml/bentoml && chown -R 1034:1034 /home/bentoml
mount -t tmpfs -o mode=0755 tmpfs /opt
mkdir -p /opt/ml/model && mount --bind "$W/sagemaker" /opt/ml/model
mount -t tmpfs -o mode=0755 tmpfs /var
mkdir /var/work && mount --bind "$W" /var/work && W=/var/work
mount -t tmpfs -o mode=1777 tmpfs /tmp  # the image's own /tmp: a download there leaves nothing
mkdir -p /var/azureml-app/azureml-models/iris/1
mount --bind "$W/azureml" /var/azureml-app/azureml-models/iris/1
mount -o remount,bind,ro /var/azureml-app/azureml-models/iris/1
i=0
for path in $KEEP_PATHS; do
    i=$((i + 1)); mkdir -p "$path"; mount --bind "$HOLD/$i" "$path"
done
IMAGE_ENV="PATH=$BIN:/usr/local/bin:/usr/bin:/bin HOME=/root BENTOML_HOME=/home/bentoml/bentoml
 PYTHONPATH=$REPO BENTOML_DO_NOT_TRACK=True PYTHONDONTWRITEBYTECODE=1"
cd "$REPO"
env -i $IMAGE_ENV "$PY" -m serving.entrypoint serve > "$W/sagemaker.log" 2>&1 &
SAGEMAKER=$!
env -i $IMAGE_ENV AZUREML_MODEL_DIR=/var/azureml-app/azureml-models/iris/1 \
    "$PY" -m serving.entrypoint > "$W/azureml.log" 2>&1 &
AZUREML=$!
"$PY" -c "$GCS" "$W/gcs-url" "$W/vertex-src" > "$W/gcs.log" 2>&1 &
for _ in $(seq 1 300); do [ -s "$W/gcs-url" ] && break; sleep 0.1; done
env -i $IMAGE_ENV AIP_MODE=PREDICTION AIP_HTTP_PORT=8081 AIP_STORAGE_URI=$VERTEX_URI \
    AIP_HEALTH_ROUTE=$VERTEX_BASE AIP_PREDICT_ROUTE=$VERTEX_BASE:predict \
    STORAGE_EMULATOR_HOST="$(cat "$W/gcs-url")" "$PY" -m serving.entrypoint > "$W/vertex.log" 2>&1 &
VERTEX=$!
"$PY" -c "$PROBE" "sagemaker=$SAGEMAKER" "azureml=$AZUREML" "vertex=$VERTEX"
"""

# The Cloud Storage fake, inside the namespace (its network is the servers' network).
GCS = r"""
import os, sys, time
from pathlib import Path
from tests.fakes.gcs import FakeGcs
fake = FakeGcs().start()
fake.storage.put_tree("cloud-ai-platform-1", "iris-1234/model", Path(sys.argv[2]))
Path(sys.argv[1] + ".tmp").write_text(fake.url)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(60)
"""

# Runs as root inside the namespace: waits for both servers, predicts, reads the uids.
PROBE = r"""
import json, os, sys, time, urllib.request

def get(url, body=None):
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.read().decode()

def tree(pid):
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c, parent in parents.items() if parent == p]
    return found

def uids(pid):
    out = {}
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                line = next(l for l in f if l.startswith("Uid:"))
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode()[:120]
        except (OSError, StopIteration):
            continue
        out[str(p)] = {"real_uid": int(line.split()[1]), "cmd": cmd}
    return out

pids = dict(arg.split("=") for arg in sys.argv[1:])
servers = {name: (int(pids[name]), *route) for name, route in ROUTES.items()}
body = json.dumps({"instances": [ROW]}).encode()
deadline = time.monotonic() + TIMEOUT
result = {}
for name, (pid, port, ready, predict) in servers.items():
    while True:
        try:
            if get(f"http://127.0.0.1:{port}{ready}")[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or not os.path.exists(f"/proc/{pid}"):
            result[name] = {"error": "not ready"}
            break
        time.sleep(0.5)
    if name in result:
        continue
    status, text = get(f"http://127.0.0.1:{port}{predict}", body)
    result[name] = {"status": status, "answer": json.loads(text), "procs": uids(pid)}
print("RESULT " + json.dumps(result), flush=True)
"""


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mounts in a namespace, files owned by other uids)"
    for tool in ("unshare", "ip", "mount", "env"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot make namespaces here: {probe.stderr.strip()[:200]}"
    return None


def _platform_copy(src: Path, dest: Path, uid: int, file_mode: int, dir_mode: int) -> None:
    shutil.copytree(src, dest)
    for path in (dest, *dest.rglob("*")):
        os.chown(path, uid, uid)
        path.chmod(dir_mode if path.is_dir() else file_mode)


def _interpreter_fix() -> tuple[str, str]:
    """(a dir others cannot traverse, its child holding the interpreter), or ('', '')."""
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    fixes = set()
    for prefix in prefixes:
        for parent in reversed(prefix.parents):
            if not parent.stat().st_mode & stat.S_IXOTH:
                fixes.add((str(parent), str(Path(*prefix.parts[: len(parent.parts) + 1]))))
                break
    if len(fixes) > 1:
        pytest.skip(f"the interpreter sits under several private dirs: {sorted(fixes)}")
    return fixes.pop() if fixes else ("", "")


COVERED = ("/home", "/opt", "/var", "/tmp")  # the dirs SETUP replaces with the image's own


def _kept_paths() -> list[str]:
    """The checkout and the interpreter's dirs that lie under a covered dir (outermost only)."""
    wanted = {REPO.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    wanted |= {Path(p).resolve() for p in sys.path if p and Path(p).is_dir()}
    under = sorted(p for p in wanted if any(p.is_relative_to(c) for c in COVERED))
    outer = [p for p in under if not any(p != q and p.is_relative_to(q) for q in under)]
    if any(" " in str(p) for p in outer):
        pytest.skip(f"a path to keep has a space: {outer}")
    return [str(p) for p in outer]


def _hold_dir() -> str:
    """An existing dir outside the covered ones to hold the kept paths meanwhile."""
    for candidate in ("/mnt", "/media", "/srv"):
        if Path(candidate).is_dir() and not Path(candidate).is_symlink():
            return candidate
    pytest.skip("needs one of /mnt, /media, /srv to hold the checkout while /tmp is replaced")


def _run(iris_dir: Path, work: Path) -> dict[str, Any]:
    shutil.copy("/etc/passwd", work / "passwd")
    shutil.copy("/etc/group", work / "group")
    with (work / "passwd").open("a") as f:
        f.write(f"bentoml:x:{BENTOML_UID}:{BENTOML_UID}::/home/bentoml:/bin/sh\n")
    with (work / "group").open("a") as f:
        f.write(f"bentoml:x:{BENTOML_UID}:\n")
    shutil.copytree(iris_dir, work / "vertex-src")  # what the GCS fake serves
    # SageMaker: model.tar.gz extracted by root, modes as archived
    _platform_copy(iris_dir, work / "sagemaker", 0, 0o600, 0o700)
    # Azure ML: the registered folder one level down, world-readable, another owner
    (work / "azureml").mkdir(mode=0o755)
    _platform_copy(iris_dir, work / "azureml" / "iris", PLATFORM_UID, 0o644, 0o755)
    hide, keep = _interpreter_fix()
    env = {
        "PATH": os.environ["PATH"], "W": str(work), "HIDE": hide, "KEEP": keep,
        "REPO": str(REPO), "PY": sys.executable, "BIN": str(Path(sys.executable).parent),
        "VERTEX_URI": "gs://cloud-ai-platform-1/iris-1234", "VERTEX_BASE": VERTEX_BASE,
        "GCS": GCS, "PYTHONPATH": str(REPO),
        "KEEP_PATHS": " ".join(_kept_paths()), "HOLD": _hold_dir(),
        "PROBE": PROBE.replace("ROW", repr(IRIS_ROW)).replace("TIMEOUT", repr(TIMEOUT - 60))
        .replace("ROUTES", repr(ROUTES)),
    }  # fmt: skip
    done = subprocess.run(
        [*UNSHARE, "bash", "-c", SETUP], env=env, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip
    logs = {n: (work / f"{n}.log").read_text()[-3000:] for n in (*ROUTES, "gcs")
            if (work / f"{n}.log").exists()}  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, (done.stdout, done.stderr, logs)
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    result["logs"] = logs
    return result


def test_each_contract_serves_as_its_user_in_a_container_like_namespace(iris_dir: Path) -> None:
    why = _why_not()
    if why:
        pytest.skip(why)
    # under /tmp with 0755: pytest's own tmp dirs are 0700, closed to the bentoml user
    with tempfile.TemporaryDirectory(prefix="mlcloud-image-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        result = _run(iris_dir, work)
    logs = result["logs"]
    users = {"sagemaker": 0, "azureml": BENTOML_UID, "vertex": BENTOML_UID}
    for name, expected_uid in users.items():
        got = result[name]
        assert "error" not in got, (name, logs.get(name))
        assert got["status"] == 200 and got["answer"] == {"predictions": [0]}, got
        procs = got["procs"]
        assert len(procs) >= 2, procs  # bentoml's process and the worker(s) it started
        assert {p["real_uid"] for p in procs.values()} == {expected_uid}, (name, procs)
        assert any("bentoml" in p["cmd"] for p in procs.values()), procs
    assert "SageMaker expects root" in logs["sagemaker"], logs["sagemaker"]
    assert "serving as bentoml" in logs["azureml"], logs["azureml"]
    assert "downloaded gs://cloud-ai-platform-1/iris-1234" in logs["vertex"], logs["vertex"]
    assert "serving as bentoml" in logs["vertex"], logs["vertex"]
