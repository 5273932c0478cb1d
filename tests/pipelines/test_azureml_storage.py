"""``azureml://`` storage in pipelines, against the Azure ML transport fake under the real
MLClient and azure-storage-blob: a data trigger on a datastore folder (listed, never
downloaded), an artifact copied out of a datastore once per version, both URI forms, and a
pipeline whose artifact goes from this machine into Azure ML and back out. The datastore
resolves through ``datastores.get`` + ``listSecrets`` to its blob container; the assertions
read what the far end was sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlcloud import pipelines as pl
from mlcloud.errors import NotFound, SpecError
from mlcloud.pipelines import artifacts
from tests.fakes.azureml import Installed, install
from tests.fakes.azureml.common import BLOB_HOST
from tests.pipelines.conftest import write
from tests.providers.azureml.conftest import SETTINGS

CONTAINER = "azureml-blobstore"  # the fake workspaceblobstore's container
SHORT = "azureml://datastores/workspaceblobstore/paths"
LONG = (
    f"azureml://subscriptions/{SETTINGS['subscription_id']}/resourcegroups/rg/workspaces/ws1/"
    "datastores/workspaceblobstore/paths"
)


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Installed]:
    """The fake workspace, and an mlcloud.yaml whose default is local with an ``azure``
    profile beside it (the one azureml profile: it reads azureml:// URIs)."""
    config = tmp_path / "mlcloud.yaml"
    profiles = {"azure": {"type": "azureml", **SETTINGS}}
    config.write_text(yaml.safe_dump({"default": "local", "profiles": profiles}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    installed = install(monkeypatch)
    yield installed
    installed.fake.close()


def _put(azure: Installed, path: str, data: bytes) -> None:
    azure.fake.blobs[f"{CONTAINER}/{path}"] = data


def _blob_reads(azure: Installed) -> list[str]:
    """The blobs the far end was asked for (Get Blob), by name."""
    prefix = f"https://{BLOB_HOST}/{CONTAINER}/"
    return [
        r.url.split("?")[0][len(prefix) :]
        for r in azure.transport.requests
        if r.method == "GET" and r.url.startswith(prefix)
    ]


def _listings(azure: Installed) -> list[str]:
    return [r.url for r in azure.transport.find("GET", "comp=list")]


def test_a_data_trigger_fires_on_a_new_blob(project: Path, azure: Installed) -> None:
    _put(azure, "incoming/rows-1.csv", b"1\n")
    _put(azure, "incoming-old/rows.csv", b"not under incoming/\n")
    uri = f"{SHORT}/incoming"
    spec = {"name": "onazure", "steps": [{"name": "ok", "condition": "1 > 0"}],
            "triggers": [{"data": uri, "every": "1s", "settle": "1s"}]}  # fmt: skip
    assert pl.schedule(write(project, spec))["warnings"] == []  # watched now
    # the datastore resolved through the MLClient, then the container listed by prefix
    assert azure.transport.find("GET", "/datastores/workspaceblobstore")
    assert azure.transport.find("POST", "/datastores/workspaceblobstore/listSecrets")
    assert any("prefix=incoming" in u for u in _listings(azure))
    now = time.time()
    assert pl.tick(now=now + 2) == []  # unchanged
    _put(azure, "incoming-old/rows.csv", b"changed, but not under the trigger's folder\n")
    assert pl.tick(now=now + 4) == []
    _put(azure, "incoming/rows-2.csv", b"2\n")  # new data lands in the datastore
    assert pl.tick(now=now + 6) == []  # noticed; fires once it stays so for `settle`
    fired = pl.tick(now=now + 8)
    assert len(fired) == 1 and fired[0].reason.startswith(f"data {uri}: content digest")
    _put(azure, "incoming/rows-1.csv", b"1\nrewritten\n")  # same name, new content: new ETag
    assert pl.tick(now=now + 10) == []
    again = pl.tick(now=now + 12)
    assert len(again) == 1 and again[0].kind == "data"
    assert pl.tick(now=now + 14) == []
    assert _blob_reads(azure) == []  # digests of listings: nothing was downloaded
    assert pl.wait(str(fired[0].run_id), timeout=60).state == "SUCCEEDED"


def test_an_artifact_is_copied_out_once_per_version(tmp_path: Path, azure: Installed) -> None:
    home = tmp_path / "home"
    _put(azure, "runs/1/model/mlcloud-model.yaml", b"framework: sklearn\n")
    _put(azure, "runs/1/model/sub/weights.bin", b"w" * 100_000)
    _put(azure, "runs/1/model-2/other.bin", b"not part of it")  # same prefix start: not it
    uri = f"{SHORT}/runs/1/model"
    copy = Path(artifacts.for_provider("local", uri, home))
    assert sorted(p.name for p in copy.iterdir()) == [".mlcloud-copied", "mlcloud-model.yaml",
                                                      "sub"]  # fmt: skip
    assert (copy / "sub" / "weights.bin").read_bytes() == b"w" * 100_000
    assert sorted(_blob_reads(azure)) == ["runs/1/model/mlcloud-model.yaml",
                                          "runs/1/model/sub/weights.bin"]  # fmt: skip
    # the datastore resolved once for the listing and both downloads
    assert len(azure.transport.find("POST", "/datastores/workspaceblobstore/listSecrets")) == 1
    azure.transport.requests.clear()
    assert artifacts.localize(uri, home) == copy  # unchanged: listed, not copied again
    assert _blob_reads(azure) == [] and _listings(azure)
    _put(azure, "runs/1/model/sub/weights.bin", b"v" * 10)  # a new version
    fresh = artifacts.localize(uri, home)
    assert fresh != copy and (fresh / "sub" / "weights.bin").read_bytes() == b"v" * 10
    # the long form names the same folder (this profile's workspace): the same content key
    assert artifacts.localize(f"{LONG}/runs/1/model", home).parent == fresh.parent
    assert artifacts.for_provider("azureml", uri, home) == uri  # Azure ML reads it itself
    # one file: copied as that file
    _put(azure, "runs/1/metrics.json", b'{"score": 1}')
    single = artifacts.localize(f"{SHORT}/runs/1/metrics.json", home)
    assert single.name == "metrics.json" and single.read_bytes() == b'{"score": 1}'


def test_what_cannot_be_read_is_said(tmp_path: Path, azure: Installed) -> None:
    with pytest.raises(NotFound):  # the far end's 404 for a datastore it does not have
        artifacts.localize(f"{SHORT.replace('workspaceblobstore', 'nosuch')}/x", tmp_path)
    other = LONG.replace("/workspaces/ws1/", "/workspaces/other/")
    with pytest.raises(NotFound):  # another workspace, asked with this profile's credential
        artifacts.remote_digest(f"{other}/x")
    assert azure.transport.find("GET", "/workspaces/other/datastores/workspaceblobstore")
    with pytest.raises(SpecError, match="not an Azure ML datastore URI"):
        artifacts.remote_digest("azureml://jobs/x/outputs/model")
    assert artifacts.remote_digest(f"{SHORT}/nothing/here") is None


def test_azureml_uris_need_an_azureml_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "mlcloud.yaml"
    two = {"a": {"type": "azureml", **SETTINGS}, "b": {"type": "azureml", **SETTINGS}}
    config.write_text(yaml.safe_dump({"default": "local", "profiles": two}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    with pytest.raises(SpecError, match="which azureml profile") as err:
        artifacts.store_provider(f"{SHORT}/x")
    assert err.value.hint and "provider" in err.value.hint
    assert artifacts.store_provider(f"{SHORT}/x", ["local", "b"]).name == "b"
    config.write_text(yaml.safe_dump({"default": "local", "profiles": {}}))
    with pytest.raises(SpecError, match="needs a profile of type azureml"):
        artifacts.store_provider(f"{SHORT}/x", ["azureml"])


PREP = """\
from mlcloud import runtime
(runtime.output_dir() / "rows.csv").write_text("5.1,3.5\\n")
"""
EVALUATE = """\
import os
from pathlib import Path
from mlcloud import runtime
weights = Path(os.environ["MLCLOUD_INPUT_MODEL"]) / "weights.txt"
runtime.log_metrics({"score": float(weights.read_text())})
"""


def test_an_artifact_goes_into_azure_ml_and_back_out(
    tmp_path: Path, azure: Installed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prep (local) → train (Azure ML: prep's output uploaded into the workspace datastore)
    → evaluate (local: train's model copied out of the datastore) → gate."""
    import threading

    from mlcloud import api
    from mlcloud.errors import NotFoundLocally
    from mlcloud.pipelines import launch, runner

    root = tmp_path / "project"
    root.mkdir()
    (root / "prep.py").write_text(PREP)
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "train.py").write_text("print('Azure ML runs this')\n")
    monkeypatch.chdir(tmp_path)  # the SDK records git facts of the working directory
    sklearn = {"name": "sklearn", "version": "1.5"}
    data = {
        "name": "roundtrip",
        "steps": [
            {"name": "prep", "job": {"name": "prep", "command": ["python", "prep.py"]}},
            {"name": "train", "provider": "azure", "inputs": {"data": "prep.output"},
             "job": {"name": "train", "command": ["python", "train.py"], "framework": sklearn}},
            {"name": "evaluate", "inputs": {"model": "train.model"},
             "job": {"name": "evaluate", "command": ["python", "evaluate.py"]}},
            {"name": "gate", "condition": "evaluate.metrics.score >= 0.8"},
        ],
    }  # fmt: skip
    (root / "pipeline.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(launch, "spawn", lambda store, run_id: None)  # the runner runs here
    run = pl.run(root / "pipeline.yaml")
    thread = threading.Thread(target=runner.execute, args=(run.id,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    while True:  # until the train step's Azure ML job is submitted
        step = {s.step: s for s in pl.get(run.id).steps}["train"]
        try:
            record = api.job(str(step.job_id)).record if step.job_id else None
        except NotFoundLocally:
            record = None
        if record is not None and record.native_id:
            break
        assert time.monotonic() < deadline and thread.is_alive(), pl.describe(pl.get(run.id))
        time.sleep(0.05)
    # in: prep's local output was uploaded to the datastore and the job reads it from there
    (put,) = azure.transport.find("PUT", f"/jobs/{record.native_id}?")
    sent = put.json()["properties"]["inputs"]["data"]["uri"]
    assert sent.startswith(f"{SHORT}/LocalUpload/")
    folder = sent[len(SHORT) + 1 :].rstrip("/")
    uploaded = {k: v for k, v in azure.fake.blobs.items() if k.startswith(f"{CONTAINER}/{folder}")}
    assert list(uploaded.values()) == [b"5.1,3.5\n"], uploaded
    # Azure ML's end: the job writes its model folder and completes
    _put(azure, f"mlcloud/jobs/{record.id}/model/weights.txt", b"0.9")
    _put(azure, f"mlcloud/jobs/{record.id}/model/mlcloud-model.yaml", b"framework: custom\n")
    azure.fake.set_job_status(record.native_id, "Completed")
    thread.join(90)
    final = pl.get(run.id)
    by = {s.step: s for s in final.steps}
    assert final.state == "SUCCEEDED", [(s.step, s.state, s.message) for s in final.steps]
    assert by["evaluate"].outputs["metrics"] == {"score": 0.9}  # out: the copy was read
    assert f"mlcloud/jobs/{record.id}/model/weights.txt" in _blob_reads(azure)


MANIFEST = b"framework: sklearn\nsignature:\n  inputs: [{name: x, shape: [-1, 4]}]\n"


def test_the_model_manifest_at_an_azureml_uri(azure: Installed) -> None:
    """What a re-deploy's input check reads (``Provider.read_model_manifest``): a model folder
    in a datastore, either URI form, or a registered model (its folder)."""
    from azure.ai.ml.entities import Model

    from mlcloud.store import Store
    from tests.providers.azureml.conftest import make_provider

    _put(azure, "models/iris/mlcloud-model.yaml", MANIFEST)
    _put(azure, "models/big/mlcloud-model.yaml", b"x" * (2 << 20))
    _put(azure, "models/bad/mlcloud-model.yaml", b"framework: [unclosed\n")
    with Store.borrowed(None) as store:
        provider = make_provider(store)
        for uri in (f"{SHORT}/models/iris", f"{LONG}/models/iris/",
                    f"{SHORT}/models/iris/mlcloud-model.yaml"):  # fmt: skip
            manifest = provider.read_model_manifest(uri)
            assert manifest and manifest["signature"]["inputs"][0]["shape"] == [-1, 4], uri
        for uri in (f"{SHORT}/models/none", f"{SHORT}/models/big", f"{SHORT}/models/bad",
                    "s3://bucket/model.tar.gz"):  # fmt: skip
            assert provider.read_model_manifest(uri) is None, uri  # not checked, not a crash
        assert "models/big/mlcloud-model.yaml" not in _blob_reads(azure)  # too big: unread
        model = Model(name="iris", version="3", path=f"{SHORT}/models/iris", type="custom_model")
        created = provider.clients.ml.models.create_or_update(model)
        assert created.id.endswith("/models/iris/versions/3")  # what an endpoint record keeps
        for ref in ("azureml:iris:3", created.id, f"azureml:{created.id}"):
            assert provider.read_model_manifest(ref)["framework"] == "sklearn", ref
        assert azure.transport.find("GET", "/models/iris/versions/3")
