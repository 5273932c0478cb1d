"""Canary traffic on SageMaker, against moto in server mode: production variants with weights.

What moto received is read at the server (``far_end.FAR_END``) and its own endpoint state
(``backend()``); the splits are those moto applies, not what mlcloud remembers. moto implements
UpdateEndpointWeightsAndCapacities itself, so a split that keeps every variant is sent as that;
retiring a variant is a new EndpointConfig without it and UpdateEndpoint (the fixture's handler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlcloud.errors import SpecError
from mlcloud.provider import Capability
from mlcloud.records import EndpointRecord, Plan
from mlcloud.specs import Deployment
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.endpoint_plan import plan_traffic
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.conformance.jobs import planned
from tests.providers.common.golden import check_golden, masked
from tests.providers.sagemaker.conftest import backend
from tests.providers.sagemaker.far_end import Recorder

NAME = "ep-traffic"


def _deploy(
    provider: SageMakerProvider, model: Path, traffic: dict[str, int] | None = None
) -> tuple[Plan[Deployment], EndpointRecord]:
    dep = Deployment(name=NAME, model=str(model), trust=TRUSTED, traffic=traffic)
    plan = provider.plan_deploy(dep)
    return plan, provider.deploy(plan)


def _far_end_split() -> dict[str, float]:
    """Each variant's weight as moto applies it (moto leaves a weight of 0 out)."""
    variants = backend().endpoints[NAME].production_variants
    return {v["VariantName"]: v.get("CurrentWeight", 0.0) for v in variants}


def _models(provider: SageMakerProvider) -> set[str]:
    return {m["ModelName"] for m in provider.clients.sagemaker.list_models()["Models"]}


def _configs(provider: SageMakerProvider) -> set[str]:
    listed = provider.clients.sagemaker.list_endpoint_configs()["EndpointConfigs"]
    return {c["EndpointConfigName"] for c in listed}


@pytest.fixture
def canary(provider: SageMakerProvider, far_end: Recorder, tmp_path: Path) -> Any:
    """Model a serving, then model b deployed as a 10% canary beside it."""
    _, first = _deploy(provider, make_custom_model(tmp_path, "a"))
    far_end.clear()
    plan, record = _deploy(provider, make_custom_model(tmp_path, "b"), {"new": 10, "previous": 90})
    yield first, plan, record
    provider.undeploy(NAME)


def test_traffic_split_is_declared() -> None:
    assert Capability.TRAFFIC_SPLIT in SageMakerProvider.capabilities


def test_canary_deploy_sends_two_weighted_variants(
    provider: SageMakerProvider, far_end: Recorder, canary: Any, tmp_path: Path
) -> None:
    first, plan, record = canary
    old, new = first.details["newest"], record.details["newest"]
    check_golden("sagemaker", "deploy-canary", masked(plan, str(tmp_path)))
    assert far_end.sent() == planned(plan)
    (config,) = [s.request for s in plan.steps if s.call == "sagemaker.CreateEndpointConfig"]
    variants = [(v["VariantName"], v["InitialVariantWeight"]) for v in config["ProductionVariants"]]
    assert variants == [(old, 90.0), (new, 10.0)]
    assert _far_end_split() == {old: 90.0, new: 10.0}
    assert record.details["traffic"] == {old: 90, new: 10}
    assert record.details["versions"][old] == first.details["versions"][old]
    assert record.details["versions"][new]["sha256"] == record.model_sha256 != first.model_sha256


def test_step_then_promote_retires_the_old_variant(
    provider: SageMakerProvider, far_end: Recorder, canary: Any
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]

    far_end.clear()
    step = plan_traffic(provider, provider.endpoint_status(NAME), {old: 50, new: 50})
    check_golden("sagemaker", "set-traffic-step", masked(step))
    stepped = provider.set_traffic(NAME, {old: 50, new: 50})
    assert far_end.sent() == planned(step)
    assert [call for call, _ in far_end.sent()] == ["sagemaker.UpdateEndpointWeightsAndCapacities"]
    assert _far_end_split() == {old: 50.0, new: 50.0}
    assert stepped.details["traffic"] == {old: 50, new: 50}

    far_end.clear()
    promote = plan_traffic(provider, stepped, {new: 100})
    check_golden("sagemaker", "set-traffic-promote", masked(promote))
    promoted = provider.set_traffic(NAME, {new: 100})
    assert far_end.sent() == planned(promote)
    assert _far_end_split() == {new: 100.0}
    assert first.details["model_name"] not in _models(provider)  # the old version is gone
    assert record.details["endpoint_config"] not in _configs(provider)
    assert promoted.details["traffic"] == {new: 100}
    assert set(promoted.details["versions"]) == {new} and promoted.details["newest"] == new
    assert provider.endpoint_status(NAME).details["traffic"] == {new: 100}


def test_rollback_retires_the_canary(
    provider: SageMakerProvider, far_end: Recorder, canary: Any
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    far_end.clear()
    rolled = provider.set_traffic(NAME, {old: 100})
    calls = [call for call, _ in far_end.sent()]
    assert calls == [
        "sagemaker.CreateEndpointConfig",
        "sagemaker.UpdateEndpoint",
        "sagemaker.DeleteEndpointConfig",
        "sagemaker.DeleteModel",
    ]
    assert _far_end_split() == {old: 100.0}
    assert record.details["model_name"] not in _models(provider)
    assert first.details["model_name"] in _models(provider)  # the old version never stopped
    assert rolled.details["traffic"] == {old: 100}
    assert rolled.details["newest"] == new  # the last deploy's, retired
    assert rolled.model_sha256 == first.model_sha256
    assert new not in rolled.details["versions"]


def test_bad_weights_are_refused_before_anything_is_sent(
    provider: SageMakerProvider, far_end: Recorder, canary: Any, tmp_path: Path
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    far_end.clear()
    for bad in ({old: 60, new: 60}, {old: 50, "v-nosuch": 50}, {old: 110, new: -10}, {}):
        with pytest.raises(SpecError):
            provider.set_traffic(NAME, bad)
    model = make_custom_model(tmp_path, "c")
    for traffic in ({"a": 50, "b": 50}, {"new": 10, "old": 90}):
        with pytest.raises(SpecError):
            _deploy(provider, model, traffic)
    with pytest.raises(SpecError):  # a canary needs one version serving already
        provider.plan_deploy(
            Deployment(name="ep-fresh", model=str(model), traffic={"new": 10, "previous": 90})
        )
    assert far_end.sent() == []
    assert _far_end_split() == {old: 90.0, new: 10.0}
