"""The native-registry template (providers without a native registry) and the pure sync rules
every cloud's ``model_registry.py`` applies (``providers/common/native_sync.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcloud.config import Profile
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import ModelVersionRecord, Plan
from mlcloud.store import Store
from providers.common import native_sync


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("MLCLOUD_HOME", str(tmp_path / "home"))
    return Store.open()


def test_providers_without_a_native_registry(store: Store) -> None:
    from providers.local import LocalProvider

    local = LocalProvider(Profile("local", "local"), store)
    version = ModelVersionRecord("iris", 1, "/m", details={"native": {"x": 1}})
    assert local.plan_register(version) is None
    assert local.sync_aliases(version, ["champion"]) == []
    assert local.native_drift(version, ["champion"]) == []
    plan: Plan[ModelVersionRecord] = local.make_plan("register", "iris:1", version, [])
    with pytest.raises(UnsupportedFeature):
        local.register(plan)


def test_register_refuses_a_plan_of_another_kind(store: Store) -> None:
    from providers.sagemaker import SageMakerProvider

    aws = SageMakerProvider(Profile("aws", "sagemaker", {"region": "us-east-1"}), store)
    version = ModelVersionRecord("iris", 1, "/m")
    with pytest.raises(SpecError, match="is a deploy plan"):
        aws.register(aws.make_plan("deploy", "iris:1", version, []))  # type: ignore[arg-type]
    # a version never registered natively: drift says so, sync has nothing to do
    assert aws.native_drift(version, []) == [
        "iris:1 has no native entry in sagemaker (profile 'aws')"
    ]
    assert aws.sync_aliases(version, ["champion"]) == []


def test_sync_decisions() -> None:
    fp = native_sync.fingerprint
    old, new = {"alias a": "set"}, {"alias b": "set"}
    # as mlcloud left it: write the new state
    assert native_sync.decide(old, fp(old), new, "X") == native_sync.Decision(True, [])
    # already showing the new state: only the fingerprint lags
    assert native_sync.decide(new, fp(old), new, "X").write
    assert native_sync.decide(new, fp(new), new, "X") == native_sync.Decision(False, [])
    # changed by someone else: left, and said why
    decision = native_sync.decide({"alias z": "set"}, fp(old), new, "X")
    assert not decision.write
    assert decision.left == [
        "alias b: X has nothing, mlcloud's registry says 'set'",
        "alias z: X has 'set', mlcloud's registry says nothing",
        "changed outside mlcloud since its last sync (X)",
    ]
    # a move mlcloud has not applied yet is a difference, not an outside change
    assert native_sync.drift(old, fp(old), new, "X")[-1].startswith("not applied yet")
    assert native_sync.drift(new, fp(new), new, "X") == []
    assert fp({"a": "1", "b": "2"}) == fp({"b": "2", "a": "1"})
