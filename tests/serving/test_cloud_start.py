"""Issue 10, items 1-4, in-process: how each cloud starts the container (the ``serve``
argument, a gs:// model with no /gcs mount, SageMaker's content types, the user that serves)."""

from __future__ import annotations

import os
import pwd
import tempfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlcloud import modeldir
from mlcloud.modeldir import ModelDirError
from serving import entrypoint
from serving.app import State, build_app, media_routes
from serving.contracts import resolve
from serving.entrypoint import download_gcs, prepare, readable_by, serve_user
from serving.guard import GuardMiddleware
from serving.loaders import load_model
from tests.fakes.gcs import running
from tests.serving.conftest import IRIS_ROW

ROW2 = [6.7, 3.0, 5.2, 2.3]


def test_serve_argument_selects_sagemaker() -> None:
    # SageMaker: `docker run IMAGE serve`, nothing in the environment says SageMaker.
    c = resolve({}, serve_arg=True)
    assert (c.name, c.port, c.model_dir) == ("sagemaker", 8080, Path("/opt/ml/model"))
    assert resolve({}).name == "local"
    # another platform's variables, or an explicit contract, still win over the argument
    assert resolve({"AIP_HTTP_PORT": "8080"}, serve_arg=True).name == "vertex"
    assert resolve({"MLCLOUD_SERVING_CONTRACT": "local"}, serve_arg=True).name == "local"
    env: dict[str, str] = {"MLCLOUD_SERVE_MODEL": "/m"}
    argv, contract, _ = prepare(env, serve_arg=True)
    assert argv[-2:] == ["--port", "8080"] and contract.name == "sagemaker"
    assert env["MLCLOUD_SERVING_CONTRACT"] == "sagemaker"  # the server process agrees


def test_vertex_gs_uri_is_downloaded_and_verified(
    iris_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = resolve({"AIP_HTTP_PORT": "8080", "AIP_STORAGE_URI": "gs://b/iris-1234"})
    assert c.model_dir is None and c.model_uri == "gs://b/iris-1234"  # no /gcs mapping
    with running() as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
        uri = fake.storage.put_tree("cloud-ai-platform-1", "iris-1234", iris_dir)
        env = {"AIP_HTTP_PORT": "8080", "AIP_STORAGE_URI": uri}
        env["MLCLOUD_SERVE_DOWNLOAD_DIR"] = str(tmp_path / "dl")
        _, contract, model = prepare(env, serve_arg=True)
        assert contract.name == "vertex" and model == tmp_path / "dl"
        assert env["MLCLOUD_SERVE_MODEL"] == str(model)
        assert modeldir.digest(model) == modeldir.digest(iris_dir)
        # a changed object in the bucket is refused by its sha256 before anything loads
        key = next(k for k in fake.storage.blobs if k[1].endswith(".skops"))
        fake.storage.blobs[key].data += b"x"
        with pytest.raises(ModelDirError, match="does not match"):
            download_gcs(uri, tmp_path / "dl2")
        with pytest.raises(ModelDirError, match="holds no objects"):
            download_gcs("gs://cloud-ai-platform-1/nothing-here", tmp_path / "dl3")


def _client(iris_dir: Path, contract_name: str) -> TestClient:
    contract = resolve({"MLCLOUD_SERVING_CONTRACT": contract_name, "MLCLOUD_SERVE_MODEL": "/m"})
    state = State(predictor=load_model(iris_dir))
    app = GuardMiddleware(
        build_app(contract, state, metrics_route=False),
        max_body=1 << 20,
        routes=contract.routes,
        record=False,
        media=media_routes(contract),
    )
    return TestClient(app)


def test_sagemaker_csv_and_jsonlines_multi_record(iris_dir: Path) -> None:
    c = _client(iris_dir, "sagemaker")
    params = c.get("/execution-parameters").json()
    assert params["BatchStrategy"] == "MULTI_RECORD"
    # batch transform, SplitType=Line + MULTI_RECORD: many CSV rows in one body
    rows = "\n".join(",".join(map(str, r)) for r in [IRIS_ROW, ROW2, IRIS_ROW]) + "\n"
    resp = c.post("/invocations", content=rows, headers={"content-type": "text/csv"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/csv")
    assert resp.text.splitlines() == ["0", "2", "0"]  # one output line per input line
    lines = b"".join(f"{r}\n".encode() for r in [IRIS_ROW, ROW2])
    resp = c.post(
        "/invocations",
        content=lines,
        headers={"content-type": "application/jsonlines", "accept": "application/jsonlines"},
    )
    assert resp.status_code == 200 and resp.text == "0\n2\n"
    asked = c.post(
        "/invocations", content=rows, headers={"content-type": "text/csv", "accept": "*/*"}
    )
    assert asked.text == "0\n2\n0\n"
    as_json = c.post(
        "/invocations",
        content=rows,
        headers={"content-type": "text/csv", "accept": "application/json"},
    )
    assert as_json.json() == {"predictions": [0, 2, 0]}
    bad = c.post("/invocations", content="1,x,3,4\n", headers={"content-type": "text/csv"})
    assert bad.status_code == 400 and "CSV row 1" in bad.json()["error"]
    short = c.post("/invocations", content="1,2\n", headers={"content-type": "text/csv"})
    assert short.status_code == 422
    pickle = c.post(
        "/invocations", content=b"x", headers={"content-type": "application/vnd.bentoml+pickle"}
    )
    assert pickle.status_code == 415
    # other contracts stay JSON-only
    vertex = _client(iris_dir, "local").post(
        "/predict", content=rows, headers={"content-type": "text/csv"}
    )
    assert vertex.status_code == 415


def _platform_mount(src: Path, dest: Path, uid: int, file_mode: int, dir_mode: int) -> Path:
    import shutil

    shutil.copytree(src, dest)
    for path in (dest, *dest.rglob("*")):
        os.chown(path, uid, uid)
        path.chmod(dir_mode if path.is_dir() else file_mode)
    return dest


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files another owner")
def test_serving_user_can_read_the_platform_mount(iris_dir: Path) -> None:
    # pytest's tmp dirs are 0700 under root: a mount point other users can traverse instead
    with tempfile.TemporaryDirectory(prefix="mlcloud-mount-") as tmp:
        Path(tmp).chmod(0o755)
        _check_mounts(iris_dir, Path(tmp))


def _check_mounts(iris_dir: Path, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    # Azure ML style: a read-only mount owned by another uid, world-readable
    shared = _platform_mount(iris_dir, tmp_path / "azureml", 4242, 0o644, 0o755)
    # SageMaker style: model.tar.gz extracted by root, modes as archived (0600)
    private = _platform_mount(iris_dir, tmp_path / "sagemaker", 0, 0o600, 0o700)
    assert readable_by(shared, nobody.pw_uid, {nobody.pw_gid})
    assert not readable_by(private, nobody.pw_uid, {nobody.pw_gid})
    sagemaker = resolve({}, serve_arg=True)
    assert serve_user(sagemaker, private)[0] is None  # SageMaker keeps root, by design
    azureml = resolve({"AZUREML_MODEL_DIR": str(shared)})
    with pytest.MonkeyPatch.context() as mp:  # this machine has no bentoml user: use nobody
        mp.setattr(entrypoint, "SERVE_USER", "nobody")
        assert serve_user(azureml, shared)[0] == nobody  # drops: it can read the mount
        user, why = serve_user(azureml, private)
        assert user is None and "not readable by nobody" in why  # stays root, says why
        assert serve_user(azureml, private, ours=True)[0] == nobody  # downloaded: handed over
    # the decision matches what a process of that uid can really do: load it
    load_model(iris_dir)  # imports done here; the forked child only reads files
    assert _load_as(nobody.pw_uid, nobody.pw_gid, shared) == 0
    assert _load_as(nobody.pw_uid, nobody.pw_gid, private) == 13  # EACCES
    assert _load_as(0, 0, private) == 0


def _load_as(uid: int, gid: int, model: Path) -> int:
    """Load ``model`` in a forked child running as ``uid``: 0, or 13 when permission is denied
    (fork, not exec: this machine's interpreter lives under /root, unreadable for others)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            load_model(model)
            code = 0
        except ModelDirError as e:
            code = 13 if "Permission" in str(e) or isinstance(e.__cause__, PermissionError) else 2
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
