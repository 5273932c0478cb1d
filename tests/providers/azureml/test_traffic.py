"""Canary traffic on Azure ML, through the real MLClient against the fake workspace: two
managed online deployments and the endpoint's traffic (version ids are deployment names).

The fake checks traffic as Azure does (deployments of the endpoint, whole percents adding up to
100; a deployment that takes traffic cannot be deleted) and records every write as it arrived
(``fake.received``, in the plan's format); the tests read that and the fake's resources.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcloud.errors import MlcloudError, SpecError
from mlcloud.provider import Capability
from mlcloud.records import EndpointRecord, Plan
from mlcloud.specs import Deployment
from providers.azureml import AzureMLProvider
from providers.azureml.endpoint_plan import plan_traffic
from tests.conformance.endpoints import PAYLOAD, TRUSTED, make_custom_model
from tests.conformance.jobs import Sent, planned
from tests.fakes.azureml import Installed
from tests.providers.common.golden import check_golden, masked

NAME = "ep-traffic"
TRAFFIC_CALLS = ("onlineEndpoints.Update", "onlineDeployments.Delete")


def _deploy(
    provider: AzureMLProvider, model: Path, traffic: dict[str, int] | None = None
) -> tuple[Plan[Deployment], EndpointRecord]:
    dep = Deployment(name=NAME, model=str(model), trust=TRUSTED, traffic=traffic)
    plan = provider.plan_deploy(dep)
    return plan, provider.deploy(plan)


def _received(azure: Installed) -> Sent:
    """The endpoint's traffic updates and deployment deletions the workspace received."""
    return [(w.call, w.request) for w in azure.fake.received if w.call in TRAFFIC_CALLS]


def _traffic_steps(plan: Plan[Any]) -> Sent:
    return [(call, request) for call, request in planned(plan) if call in TRAFFIC_CALLS]


def _far_end_split(azure: Installed) -> dict[str, int]:
    """The workspace's endpoint traffic over the endpoint's deployments (0: none)."""
    fake = azure.fake
    traffic = fake.resources[fake._key(f"/onlineEndpoints/{NAME}")]["properties"]["traffic"]
    return {d: int(traffic.get(d, 0)) for d in fake.deployments(NAME)}


@pytest.fixture
def canary(provider: AzureMLProvider, azure: Installed, tmp_path: Path) -> Iterator[Any]:
    """Model a serving, then model b deployed as a 10% canary beside it."""
    _, first = _deploy(provider, make_custom_model(tmp_path, "a"))
    azure.fake.received.clear()
    plan, record = _deploy(provider, make_custom_model(tmp_path, "b"), {"new": 10, "previous": 90})
    yield first, plan, record
    provider.undeploy(NAME)


def test_traffic_split_is_declared() -> None:
    assert Capability.TRAFFIC_SPLIT in AzureMLProvider.capabilities


def test_canary_deploy_adds_a_second_deployment(
    azure: Installed, canary: Any, tmp_path: Path
) -> None:
    first, plan, record = canary
    old, new = first.details["newest"], record.details["newest"]
    check_golden("azureml", "deploy-canary", masked(plan, str(tmp_path)))
    assert _received(azure) == _traffic_steps(plan)
    assert ("onlineEndpoints.Update", {"traffic": {new: 10, old: 90}, "mirrorTraffic": {}}) in (
        _received(azure)
    )
    assert _far_end_split(azure) == record.details["traffic"] == {old: 90, new: 10}
    assert record.details["versions"][new]["sha256"] == record.model_sha256 != first.model_sha256


def test_step_then_promote_deletes_the_old_deployment(
    provider: AzureMLProvider, azure: Installed, canary: Any
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]

    azure.fake.received.clear()
    step = plan_traffic(provider, provider.endpoint_status(NAME), {old: 50, new: 50})
    check_golden("azureml", "set-traffic-step", masked(step))
    stepped = provider.set_traffic(NAME, {old: 50, new: 50})
    assert _received(azure) == planned(step)
    assert _far_end_split(azure) == stepped.details["traffic"] == {old: 50, new: 50}

    azure.fake.received.clear()
    promote = plan_traffic(provider, stepped, {new: 100})
    check_golden("azureml", "set-traffic-promote", masked(promote))
    promoted = provider.set_traffic(NAME, {new: 100})
    assert _received(azure) == planned(promote)
    assert _far_end_split(azure) == promoted.details["traffic"] == {new: 100}
    assert old not in azure.fake.deployments(NAME)
    assert set(promoted.details["versions"]) == {new}
    assert provider.predict(NAME, PAYLOAD)["predictions"] == ["b", "b"]


def test_rollback_deletes_the_canary(
    provider: AzureMLProvider, azure: Installed, canary: Any
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    azure.fake.received.clear()
    rolled = provider.set_traffic(NAME, {old: 100})
    assert _received(azure) == [
        ("onlineEndpoints.Update", {"traffic": {old: 100}, "mirrorTraffic": {}}),
        ("onlineDeployments.Delete", {"name": new}),
    ]
    assert _far_end_split(azure) == rolled.details["traffic"] == {old: 100}
    assert rolled.details["newest"] == new  # the last deploy's, retired
    assert rolled.model_sha256 == first.model_sha256
    assert provider.predict(NAME, PAYLOAD)["predictions"] == ["a", "a"]


def test_bad_weights_are_refused_before_anything_is_sent(
    provider: AzureMLProvider, azure: Installed, canary: Any, tmp_path: Path
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    azure.fake.received.clear()
    for bad in ({old: 60, new: 60}, {old: 50, "dnosuch": 50}, {old: 110, new: -10}, {}):
        with pytest.raises(SpecError):
            provider.set_traffic(NAME, bad)
    with pytest.raises(SpecError):
        _deploy(provider, make_custom_model(tmp_path, "c"), {"new": 10, "dnosuch": 90})
    assert azure.fake.received == []
    assert _far_end_split(azure) == {old: 90, new: 10}


def test_the_fake_refuses_what_azure_refuses(
    provider: AzureMLProvider, azure: Installed, canary: Any
) -> None:
    """The far end's own checks, through the SDK: traffic that is not 100 or names no
    deployment of the endpoint, and deleting a deployment that takes traffic."""
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    ml = provider.clients.ml
    for split in ({old: 60, new: 60}, {old: 50, "dnosuch": 50}):
        live = ml.online_endpoints.get(NAME)
        live.traffic = split
        with pytest.raises(MlcloudError), provider.mapped():
            ml.online_endpoints.begin_create_or_update(live).result()
    with pytest.raises(MlcloudError), provider.mapped():
        ml.online_deployments.begin_delete(name=old, endpoint_name=NAME).result()
    assert _far_end_split(azure) == {old: 90, new: 10}
