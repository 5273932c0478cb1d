"""Issue 10, item 14, the core rule (mlcloud.model_inputs): where each side's input signature
is read (registry record, model dir, the provider's storage) and what happens when a side cannot
be read (checked nothing, said so). The clouds' own reads: tests/providers/{sagemaker,vertex}/
test_redeploy_signature.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mlcloud import api, modeldir
from mlcloud.errors import SpecError
from mlcloud.model_inputs import UncheckedInputs, check_same_inputs
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.store import Store


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLCLOUD_CONFIG", raising=False)
    monkeypatch.delenv("MLCLOUD_PROVIDER", raising=False)
    return tmp_path / "home"


def model(root: Path, width: int | None, framework: str = "custom") -> Path:
    root.mkdir(parents=True)
    (root / "p.py").write_text("class P:\n    def predict(self, rows):\n        return rows\n")
    signature = {"inputs": {"shape": [-1, width], "dtype": "float64"}} if width else None
    modeldir.write_manifest(root, framework, {"predictor": "p:P"}, signature=signature)
    return root


class Reader:
    """A provider seam: what ``read_model_manifest`` would answer for each URI."""

    def __init__(self, store: Store, manifests: dict[str, dict[str, Any] | None]) -> None:
        self.store, self.name, self.manifests = store, "fake", manifests
        self.asked: list[str] = []

    def read_model_manifest(self, uri: str) -> dict[str, Any] | None:
        self.asked.append(uri)
        return self.manifests.get(uri)


def test_registry_refs_are_read_from_their_records(tmp_path: Path) -> None:
    v1, v2 = model(tmp_path / "v1", 4), model(tmp_path / "v2", 3)
    api.register_model(str(v1), "iris")
    api.register_model(str(v2), "iris")
    shutil.rmtree(v1)
    shutil.rmtree(v2)  # the records keep the signatures
    store = Store.open()
    with pytest.raises(SpecError, match="callers would break") as err:
        check_same_inputs("ep", "iris:1", "iris:2", store=store)
    assert err.value.hint is not None and "--force" in err.value.hint
    check_same_inputs("ep", "iris:1", "iris:1", store=store)
    store.close()


def test_a_cloud_uri_is_read_by_the_provider(tmp_path: Path) -> None:
    store = Store.open()
    four = {"framework": "sklearn", "signature": {"inputs": {"shape": [-1, 4], "dtype": "f"}}}
    reader = Reader(store, {"s3://b/a.tar.gz": four, "s3://b/b.tar.gz": {"framework": "onnx"}})
    local = model(tmp_path / "m", 4, "custom")
    with pytest.raises(SpecError, match="sklearn model"):  # inputs known on one side only
        check_same_inputs("ep", "s3://b/a.tar.gz", "s3://b/b.tar.gz", reader)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="the new custom model"):  # the framework differs
        check_same_inputs("ep", "s3://b/b.tar.gz", str(local), reader)  # type: ignore[arg-type]
    assert reader.asked == ["s3://b/a.tar.gz", "s3://b/b.tar.gz", "s3://b/b.tar.gz"]
    store.close()


def test_an_unreadable_side_is_a_warning_not_a_refusal(tmp_path: Path) -> None:
    store = Store.open()
    reader = Reader(store, {})
    gone = model(tmp_path / "gone", 4)
    shutil.rmtree(gone)
    new = str(model(tmp_path / "new", 3))
    with pytest.warns(UncheckedInputs, match="fake cannot read the model manifest at gs://x/m"):
        check_same_inputs("ep", "gs://x/m", new, reader)  # type: ignore[arg-type]
    with pytest.warns(UncheckedInputs, match="is read only through its provider"):
        check_same_inputs("ep", "gs://x/m", new)
    with pytest.warns(UncheckedInputs, match="no mlcloud-model.yaml"):
        check_same_inputs("ep", str(gone), new)
    with pytest.warns(UncheckedInputs, match="nope:7"):
        check_same_inputs("ep", "nope:7", new, store=store)
    check_same_inputs("ep", None, new)  # nothing served: nothing to compare, no warning
    store.close()


def test_deploy_compares_the_served_registry_version(tmp_path: Path) -> None:
    """``api.deploy`` reads the old side from the version the endpoint records serving
    (``details["registry_ref"]``), not from its model path (here deleted)."""
    v1, v2 = model(tmp_path / "v1", 4), model(tmp_path / "v2", 3)
    api.register_model(str(v1), "iris")
    api.register_model(str(v2), "iris")
    store = Store.open()
    store.put_endpoint(
        EndpointRecord(
            name="ep", provider="local", type="local", state=EndpointState.READY,
            model="/nowhere/any-more", spec={"name": "ep", "model": "x"},
            details={"registry_ref": "iris:1"},
        )
    )  # fmt: skip
    store.close()
    with pytest.raises(SpecError, match=r"'shape': \[-1, 4\]\}; the new"):
        api.deploy("iris:2", "ep", "local", trust_code=True)
    store = Store.open()
    assert store.get_endpoint("ep", "local").model == "/nowhere/any-more"  # untouched
    store.close()
