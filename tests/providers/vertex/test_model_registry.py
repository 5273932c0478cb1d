"""Vertex AI Model Registry kept in step with mlcloud's registry: the real GAPIC REST client
against the proto-strict fake (versions, version aliases, ``name@alias``, MergeVersionAliases).

What the fake received is checked in the plan's own format (``fake.vertex.received``), and
aliases are read back from the fake's state. Changes "behind mlcloud's back" are made with a
separate client (as the console would) or in the fake's state directly.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.records import ModelVersionRecord
from mlcloud.store import models as store_models
from providers.vertex import VertexProvider
from providers.vertex.registry_plan import RegisterContext, model_id
from tests.fakes.vertex import FakeVertex

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "vertex" / "register.json"
MODEL = "projects/mlcloud-test/locations/us-central1/models"


def _model_dir(root: Path, answer: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "predictor.py").write_text(
        f"class P:\n    def predict(self, rows):\n        return [{answer}] * len(rows)\n"
    )
    modeldir.write_manifest(root, "custom", {"predictor": "predictor:P"})
    return root


def _add(provider: VertexProvider, root: Path, name: str) -> ModelVersionRecord:
    """A version as the registry (REG) adds it: numbered by the store, then registered."""
    version = ModelVersionRecord(
        name=name, version=0, uri=str(root), sha256=modeldir.digest(root), provider=provider.name
    )
    version = store_models.add_version(provider.store, version)
    plan = provider.plan_register(version)
    assert plan is not None
    version.details["native"] = provider.register(plan)
    store_models.set_details(provider.store, name, version.version, version.details)
    return version


def _aliases(fake: FakeVertex, model: str, version_id: str) -> set[str]:
    (found,) = [v for v in fake.vertex.models[model] if v.version_id == version_id]
    return set(found.version_aliases)


def _native_name(version: ModelVersionRecord) -> str:
    native = version.details["native"]
    return f"{native['vertex_model']}@{native['version_id']}"


def test_register_sends_the_plan(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    root = _model_dir(tmp_path / "a")
    v1 = ModelVersionRecord(name="reg-iris", version=1, uri=str(root), provider=provider.name)
    plan = provider.plan_register(v1)
    assert plan is not None and plan.kind == "register"
    assert "modelId" in plan.steps[0].request and fake.vertex.received == []
    native = provider.register(plan)
    assert fake.vertex.received == [(s.call, s.request) for s in plan.steps]
    assert native == {
        "vertex_model": f"{MODEL}/reg-iris",
        "version_id": "1",
        "artifact_uri": plan.context_as(RegisterContext).artifact_uri,
    }
    files = {key for (_, key) in fake.storage.blobs}
    assert any(k.endswith("/predictor.py") for k in files)  # staged before the upload

    # the next version through the store (as REG registers it): parentModel, version 2
    v1 = store_models.add_version(provider.store, v1)
    v1.details["native"] = native
    store_models.set_details(provider.store, v1.name, v1.version, v1.details)
    fake.vertex.received.clear()
    v2 = _add(provider, _model_dir(tmp_path / "b", 2), "reg-iris")
    ((_, sent),) = fake.vertex.received
    assert sent["parentModel"] == f"{MODEL}/reg-iris" and "modelId" not in sent
    assert v2.details["native"]["version_id"] == "2"
    # Vertex's own alias stays on the first version
    assert _aliases(fake, f"{MODEL}/reg-iris", "1") == {"default"}


def test_golden_register_plan(provider: VertexProvider, tmp_path: Path) -> None:
    root = _model_dir(tmp_path / "iris")
    plan = provider.plan_register(ModelVersionRecord(name="iris", version=3, uri=str(root)))
    assert plan is not None
    text = plan.to_json().replace(modeldir.digest(root), "<model-sha256>")
    text = json.dumps(json.loads(text), indent=2) + "\n"
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    expected = GOLDEN.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True)))
    assert text == expected, f"register plan changed (MLCLOUD_UPDATE_GOLDEN=1 to accept):\n{diff}"


def test_alias_moves_are_vertex_version_aliases(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    v1 = _add(provider, _model_dir(tmp_path / "a"), "reg-alias")
    v2 = _add(provider, _model_dir(tmp_path / "b", 2), "reg-alias")
    model = f"{MODEL}/reg-alias"
    fake.vertex.received.clear()
    assert provider.sync_aliases(v1, ["champion"]) == []
    assert provider.sync_aliases(v2, ["challenger"]) == []
    merges = [r for c, r in fake.vertex.received if c == "ModelService.MergeVersionAliases"]
    assert merges == [
        {"name": f"{model}@1", "versionAliases": ["champion"]},
        {"name": f"{model}@2", "versionAliases": ["challenger"]},
    ]
    # name@alias resolves the way Vertex does, with the real client
    assert provider.clients.models.get_model(name=f"{model}@champion").version_id == "1"

    # champion moves to v2 (Vertex moves it off v1 by itself), then v1 is synced
    assert provider.sync_aliases(v2, ["challenger", "champion"]) == []
    assert provider.sync_aliases(v1, []) == []
    assert _aliases(fake, model, "1") == {"default"}
    assert _aliases(fake, model, "2") == {"challenger", "champion"}
    assert provider.clients.models.get_model(name=f"{model}@champion").version_id == "2"
    assert provider.native_drift(v1, []) == []
    assert provider.native_drift(v2, ["champion", "challenger"]) == []

    # an alias Vertex refuses is reported, not sent
    left = provider.sync_aliases(v1, ["Bad_Alias"])
    assert left == ["alias Bad_Alias: not a valid Vertex version alias, not mirrored"]
    assert provider.native_drift(v1, ["Bad_Alias"]) == left


def test_changes_behind_mlclouds_back_are_drift_not_overwritten(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    v1 = _add(provider, _model_dir(tmp_path / "a"), "reg-drift")
    v2 = _add(provider, _model_dir(tmp_path / "b", 2), "reg-drift")
    model = f"{MODEL}/reg-drift"
    assert provider.sync_aliases(v1, ["champion"]) == []

    # someone moves champion to v2 in the console (their own client, not mlcloud's)
    from google.cloud.aiplatform_v1 import ModelServiceClient

    console: Any = ModelServiceClient(
        credentials=provider.clients.credentials,
        transport="rest",
        client_options={"api_endpoint": fake.url},
    )
    console.merge_version_aliases(name=f"{model}@2", version_aliases=["champion"])
    assert _aliases(fake, model, "2") == {"champion"}

    drift1 = provider.native_drift(v1, ["champion"])
    assert drift1[0] == "alias champion: Vertex AI has nothing, mlcloud's registry says 'set'"
    drift2 = provider.native_drift(v2, [])
    assert drift2[0] == "alias champion: Vertex AI has 'set', mlcloud's registry says nothing"
    assert drift2[-1].startswith("changed outside mlcloud")

    # mlcloud moves staging onto v2: v2 was changed outside, so nothing is written to it
    fake.vertex.received.clear()
    left = provider.sync_aliases(v2, ["staging"])
    assert left and left[-1].startswith("changed outside mlcloud")
    assert fake.vertex.received == [] and _aliases(fake, model, "2") == {"champion"}
    # nor is champion taken back from v2 when mlcloud re-syncs v1
    left = provider.sync_aliases(v1, ["champion"])
    assert left and fake.vertex.received == [] and _aliases(fake, model, "2") == {"champion"}

    # mlcloud moves champion to a third version, in step itself: Vertex would take champion
    # from v2, which was changed outside mlcloud, so champion is left where the console put it
    v3 = _add(provider, _model_dir(tmp_path / "c", 3), "reg-drift")
    assert provider.sync_aliases(v3, ["champion"]) == [
        "alias champion: held by a version changed outside mlcloud, not moved"
    ]
    assert _aliases(fake, model, "2") == {"champion"} and _aliases(fake, model, "3") == set()

    # the version deleted in Vertex
    fake.vertex.models[model] = [v for v in fake.vertex.models[model] if v.version_id != "1"]
    assert provider.native_drift(v1, ["champion"]) == [
        f"model version {_native_name(v1)} no longer exists in Vertex AI"
    ]
    assert provider.sync_aliases(v1, []) == provider.native_drift(v1, ["champion"])


def test_the_fake_refuses_what_vertex_refuses(provider: VertexProvider, tmp_path: Path) -> None:
    from mlcloud.errors import MlcloudError

    v1 = _add(provider, _model_dir(tmp_path / "a"), "reg-rules")
    models = provider.clients.models
    for bad in (["Champion"], ["x"], ["under_score"], ["-default"], ["123"]):
        with pytest.raises(MlcloudError), provider.mapped():
            models.merge_version_aliases(name=_native_name(v1), version_aliases=bad)
    with pytest.raises(MlcloudError), provider.mapped():  # a version must be named
        models.merge_version_aliases(name=f"{MODEL}/reg-rules", version_aliases=["ok-alias"])
    # the version-less name is the default version (the first), wherever "latest" is
    _add(provider, _model_dir(tmp_path / "b", 2), "reg-rules")
    assert models.get_model(name=f"{MODEL}/reg-rules").version_id == "1"
    models.merge_version_aliases(name=f"{MODEL}/reg-rules@2", version_aliases=["default"])
    assert models.get_model(name=f"{MODEL}/reg-rules").version_id == "2"


def test_model_ids_vertex_accepts() -> None:
    assert model_id("iris") == "iris"
    assert model_id("Iris.V2").startswith("iris-v2-")
    assert model_id("2fast").startswith("m-2fast-")


def test_through_the_registry_sdk(
    fake: FakeVertex, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REG's ``mlcloud.api`` on a vertex profile: versions under one Vertex model (the second
    with parentModel, from the store), aliases as version aliases, outside moves as drift."""
    import yaml

    from mlcloud import api
    from tests.providers.vertex.conftest import settings_for

    config = tmp_path / "mlcloud.yaml"
    profiles = {"gcp": {"type": "vertex", **settings_for(fake.url)}}
    config.write_text(yaml.safe_dump({"default": "local", "profiles": profiles}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))

    api.register_model(str(_model_dir(tmp_path / "a")), "reg-e2e", provider="gcp")
    api.register_model(
        str(_model_dir(tmp_path / "b", 2)), "reg-e2e", provider="gcp", alias="champion"
    )
    model = f"{MODEL}/reg-e2e"
    uploads = [r for c, r in fake.vertex.received if c == "ModelService.UploadModel"]
    assert [("modelId" in u, "parentModel" in u) for u in uploads] == [(True, False), (False, True)]
    assert _aliases(fake, model, "2") == {"champion"}
    api.move_alias("reg-e2e", "champion", 1)
    assert (
        _aliases(fake, model, "1") == {"default", "champion"}
        and _aliases(fake, model, "2") == set()
    )
    assert api.model("reg-e2e:1")["drift"] == []

    fake.vertex.models[model][0].version_aliases.remove("champion")  # removed in the console
    assert api.model("reg-e2e:1")["drift"][0] == (
        "alias champion: Vertex AI has nothing, mlcloud's registry says 'set'"
    )
