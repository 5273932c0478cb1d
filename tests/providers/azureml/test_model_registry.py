"""Azure ML model versions kept in step with mlcloud's registry: the real MLClient against the
transport fake (model versions immutable but for tags, as the service keeps them).

What the workspace received is read from the fake (``fake.received``, the bodies off the wire)
and its stored resources; changes "behind mlcloud's back" are made with the SDK the way a user
in a notebook would, or in the fake's state directly.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.errors import Conflict, ProviderError
from mlcloud.records import ModelVersionRecord
from providers.azureml.model_registry import asset_name
from tests.fakes.azureml import Installed
from tests.fakes.azureml.received import local_path_of

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "azureml" / "register.json"


def _model_dir(root: Path, answer: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "predictor.py").write_text(
        f"class P:\n    def predict(self, rows):\n        return [{answer}] * len(rows)\n"
    )
    modeldir.write_manifest(root, "custom", {"predictor": "predictor:P"})
    return root


def _version(root: Path, name: str, number: int) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=name, version=number, uri=str(root), sha256=modeldir.digest(root), provider="azure"
    )


def _registered(provider: Any, version: ModelVersionRecord) -> ModelVersionRecord:
    plan = provider.plan_register(version)
    version.details["native"] = provider.register(plan)
    return version


def _stored(azure: Installed, name: str, version: int) -> dict[str, Any]:
    key = f"{azure.fake.ws_path}/models/{name}/versions/{version}".lower()
    return azure.fake.resources[key]["properties"]  # type: ignore[no-any-return]


def _alias_tags(azure: Installed, name: str, version: int) -> dict[str, str]:
    tags = _stored(azure, name, version).get("tags") or {}
    return {k: v for k, v in tags.items() if k.startswith("mlcloud.alias.")}


def test_register_sends_the_plan(provider: Any, azure: Installed, tmp_path: Path) -> None:
    root = _model_dir(tmp_path / "m")
    version = _version(root, "reg-iris", 1)
    plan = provider.plan_register(version)
    assert plan.kind == "register" and [s.call for s in plan.steps] == ["models.CreateOrUpdate"]
    assert azure.transport.requests == []  # planning is pure
    native = provider.register(plan)

    (received,) = [r for r in azure.fake.received if r.call == "models.CreateOrUpdate"]
    assert received.name == "reg-iris"
    uri = received.request["properties"]["modelUri"]
    # the local dir was uploaded; the far end got exactly those files under that URI
    assert local_path_of(azure.fake.blobs, uri, root) == str(root)
    expected = copy.deepcopy(dict(plan.steps[0].request))
    expected["properties"]["modelUri"] = uri
    assert received.request == expected
    assert native["azureml_model"] == "reg-iris" and native["azureml_version"] == "1"
    stored = _stored(azure, "reg-iris", 1)
    assert stored["properties"]["mlcloud.sha256"] == version.sha256

    # again (a retried register): the same version is success, nothing is sent
    azure.fake.received.clear()
    assert provider.register(provider.plan_register(version))["azureml_version"] == "1"
    assert azure.fake.received == []
    # another model under that name and version is not overwritten
    other = _version(_model_dir(tmp_path / "other", 7), "reg-iris", 1)
    with pytest.raises(Conflict):
        provider.register(provider.plan_register(other))


def test_golden_register_plan(provider: Any, tmp_path: Path) -> None:
    root = _model_dir(tmp_path / "iris")
    plan = provider.plan_register(_version(root, "iris", 3))
    text = plan.to_json().replace(str(root), "<model-dir>")
    text = text.replace(modeldir.digest(root), "<model-sha256>")
    text = json.dumps(json.loads(text), indent=2) + "\n"
    if os.environ.get("MLCLOUD_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    expected = GOLDEN.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True)))
    assert text == expected, f"register plan changed (MLCLOUD_UPDATE_GOLDEN=1 to accept):\n{diff}"


def test_alias_moves_are_tags(provider: Any, azure: Installed, tmp_path: Path) -> None:
    v1 = _registered(provider, _version(_model_dir(tmp_path / "a"), "reg-alias", 1))
    v2 = _registered(provider, _version(_model_dir(tmp_path / "b", 2), "reg-alias", 2))
    assert provider.sync_aliases(v1, ["champion"]) == []
    assert provider.sync_aliases(v2, ["challenger"]) == []
    assert _alias_tags(azure, "reg-alias", 1) == {"mlcloud.alias.champion": "1"}
    assert _alias_tags(azure, "reg-alias", 2) == {"mlcloud.alias.challenger": "2"}

    azure.fake.received.clear()
    assert provider.sync_aliases(v2, ["champion", "challenger"]) == []
    assert provider.sync_aliases(v1, []) == []
    assert _alias_tags(azure, "reg-alias", 1) == {}
    assert _alias_tags(azure, "reg-alias", 2) == {
        "mlcloud.alias.champion": "2",
        "mlcloud.alias.challenger": "2",
    }
    # each sync is one PUT of the same version, only its tags changed
    puts = [r for r in azure.fake.received if r.call == "models.CreateOrUpdate"]
    assert len(puts) == 2
    assert provider.native_drift(v1, []) == []
    assert provider.native_drift(v2, ["challenger", "champion"]) == []


def test_changes_behind_mlclouds_back_are_drift_not_overwritten(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    v1 = _registered(provider, _version(_model_dir(tmp_path / "a"), "reg-drift", 1))
    assert provider.sync_aliases(v1, ["champion"]) == []

    # someone retags the version in a notebook (the SDK, not mlcloud)
    ml = provider.clients.ml
    model = ml.models.get(name="reg-drift", version="1")
    model.tags = {k: v for k, v in model.tags.items() if k != "mlcloud.alias.champion"}
    model.tags["mlcloud.alias.prod"] = "1"
    ml.models.create_or_update(model)

    drift = provider.native_drift(v1, ["champion"])
    assert drift[:2] == [
        "tag mlcloud.alias.champion: Azure ML has nothing, mlcloud's registry says '1'",
        "tag mlcloud.alias.prod: Azure ML has '1', mlcloud's registry says nothing",
    ]
    assert drift[-1].startswith("changed outside mlcloud")

    azure.fake.received.clear()
    left = provider.sync_aliases(v1, ["champion", "staging"])
    assert left and left[-1].startswith("changed outside mlcloud")
    assert azure.fake.received == []  # nothing written
    assert _alias_tags(azure, "reg-drift", 1) == {"mlcloud.alias.prod": "1"}

    # the service keeps versions immutable: a changed modelUri is refused, not stored
    model = ml.models.get(name="reg-drift", version="1")
    model.path = "azureml://datastores/workspaceblobstore/paths/elsewhere/"
    with pytest.raises(ProviderError, match="cannot be changed"), provider.mapped():
        ml.models.create_or_update(model)
    # deleted in the workspace
    key = f"{azure.fake.ws_path}/models/reg-drift/versions/1".lower()
    del azure.fake.resources[key]
    assert provider.native_drift(v1, ["champion"]) == [
        "model reg-drift version 1 no longer exists in Azure ML"
    ]
    assert provider.sync_aliases(v1, []) == provider.native_drift(v1, ["champion"])


def test_asset_names_azure_accepts() -> None:
    assert asset_name("iris.v2_x") == "iris.v2_x"
    assert asset_name("iris v2").startswith("iris-v2-")


def test_through_the_registry_sdk(
    azure: Installed, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REG's ``mlcloud.api`` on an azureml profile: workspace versions 1 and 2, the alias tags
    moved with ``move_alias``, a tag removed in the studio reported as drift."""
    import yaml

    from mlcloud import api
    from tests.providers.azureml.conftest import SETTINGS

    config = tmp_path / "mlcloud.yaml"
    profiles = {"azure": {"type": "azureml", **SETTINGS}}
    config.write_text(yaml.safe_dump({"default": "local", "profiles": profiles}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))

    api.register_model(str(_model_dir(tmp_path / "a")), "reg-e2e", provider="azure")
    api.register_model(
        str(_model_dir(tmp_path / "b", 2)), "reg-e2e", provider="azure", alias="champion"
    )
    assert _alias_tags(azure, "reg-e2e", 2) == {"mlcloud.alias.champion": "2"}
    api.move_alias("reg-e2e", "champion", 1)
    assert _alias_tags(azure, "reg-e2e", 1) == {"mlcloud.alias.champion": "1"}
    assert _alias_tags(azure, "reg-e2e", 2) == {}
    assert api.model("reg-e2e:1")["drift"] == []

    del _stored(azure, "reg-e2e", 1)["tags"]["mlcloud.alias.champion"]  # in the studio
    assert api.model("reg-e2e:1")["drift"][0] == (
        "tag mlcloud.alias.champion: Azure ML has nothing, mlcloud's registry says '1'"
    )
