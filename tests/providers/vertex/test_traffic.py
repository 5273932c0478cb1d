"""Canary traffic on Vertex, against the fake Vertex server: ``traffic_split`` between deployed
models (version ids are deployedModelIds).

The fake applies splits the way Vertex does (percentages adding up to 100, keys that are
deployed models; a model with traffic is undeployed only by a request that reassigns it), and
records every request as it arrived; the tests read both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcloud.errors import SpecError
from mlcloud.provider import Capability
from mlcloud.records import EndpointRecord, Plan
from mlcloud.specs import Deployment
from providers.vertex import VertexProvider
from providers.vertex.endpoint_plan import plan_traffic
from tests.conformance.endpoints import PAYLOAD, TRUSTED, make_custom_model
from tests.conformance.jobs import planned
from tests.fakes.vertex import FakeVertex
from tests.providers.common.golden import check_golden, masked

NAME = "ep-traffic"


def _deploy(
    provider: VertexProvider, model: Path, traffic: dict[str, int] | None = None
) -> tuple[Plan[Deployment], EndpointRecord]:
    dep = Deployment(name=NAME, model=str(model), trust=TRUSTED, traffic=traffic)
    plan = provider.plan_deploy(dep)
    return plan, provider.deploy(plan)


def _endpoint(fake: FakeVertex) -> Any:
    (endpoint,) = [e for e in fake.vertex.endpoints.values() if e.name.endswith(f"/{NAME}")]
    return endpoint


def _far_end_split(fake: FakeVertex) -> dict[str, int]:
    """The fake's split over its deployed models (those without a share at 0)."""
    endpoint = _endpoint(fake)
    return {dm.id: endpoint.traffic_split.get(dm.id, 0) for dm in endpoint.deployed_models}


@pytest.fixture
def canary(provider: VertexProvider, fake: FakeVertex, tmp_path: Path) -> Iterator[Any]:
    """Model a serving, then model b deployed as a 10% canary beside it."""
    _, first = _deploy(provider, make_custom_model(tmp_path, "a"))
    fake.vertex.received.clear()
    plan, record = _deploy(provider, make_custom_model(tmp_path, "b"), {"new": 10, "previous": 90})
    yield first, plan, record
    provider.undeploy(NAME)


def test_traffic_split_is_declared() -> None:
    assert Capability.TRAFFIC_SPLIT in VertexProvider.capabilities


def test_canary_deploy_keeps_the_previous_model(
    fake: FakeVertex, canary: Any, tmp_path: Path
) -> None:
    first, plan, record = canary
    old, new = first.details["newest"], record.details["newest"]
    check_golden("vertex", "deploy-canary", masked(plan, str(tmp_path)))
    assert list(fake.vertex.received) == planned(plan)
    (deploy,) = fake.vertex.calls("EndpointService.DeployModel")
    assert deploy["trafficSplit"] == {"0": 10, old: 90}
    assert _far_end_split(fake) == {old: 90, new: 10}
    assert record.details["traffic"] == {old: 90, new: 10}
    assert record.details["versions"][new]["sha256"] == record.model_sha256 != first.model_sha256


def test_step_then_promote_undeploys_the_old_model(
    provider: VertexProvider, fake: FakeVertex, canary: Any
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]

    fake.vertex.received.clear()
    step = plan_traffic(provider, provider.endpoint_status(NAME), {old: 50, new: 50})
    check_golden("vertex", "set-traffic-step", masked(step))
    stepped = provider.set_traffic(NAME, {old: 50, new: 50})
    assert list(fake.vertex.received) == planned(step)
    assert [call for call, _ in fake.vertex.received] == ["EndpointService.UpdateEndpoint"]
    assert _far_end_split(fake) == stepped.details["traffic"] == {old: 50, new: 50}

    fake.vertex.received.clear()
    promote = plan_traffic(provider, stepped, {new: 100})
    check_golden("vertex", "set-traffic-promote", masked(promote))
    promoted = provider.set_traffic(NAME, {new: 100})
    assert list(fake.vertex.received) == planned(promote)
    (undeploy,) = fake.vertex.calls("EndpointService.UndeployModel")
    assert undeploy["deployedModelId"] == old and undeploy["trafficSplit"] == {new: 100}
    assert _far_end_split(fake) == promoted.details["traffic"] == {new: 100}
    assert set(promoted.details["versions"]) == {new}
    assert provider.predict(NAME, PAYLOAD)["deployed_model_id"] == new


def test_rollback_undeploys_the_canary(
    provider: VertexProvider, fake: FakeVertex, canary: Any
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    fake.vertex.received.clear()
    rolled = provider.set_traffic(NAME, {old: 100})
    assert [(call, req["deployedModelId"]) for call, req in fake.vertex.received] == [
        ("EndpointService.UndeployModel", new)
    ]
    assert _far_end_split(fake) == rolled.details["traffic"] == {old: 100}
    assert rolled.details["newest"] == new  # the last deploy's, retired
    assert rolled.model_sha256 == first.model_sha256
    prediction = provider.predict(NAME, PAYLOAD)
    assert prediction["deployed_model_id"] == old and prediction["predictions"] == ["a", "a"]


def test_bad_weights_are_refused_before_anything_is_sent(
    provider: VertexProvider, fake: FakeVertex, canary: Any, tmp_path: Path
) -> None:
    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    fake.vertex.received.clear()
    for bad in ({old: 60, new: 60}, {old: 50, "999999": 50}, {old: 110, new: -10}, {}):
        with pytest.raises(SpecError):
            provider.set_traffic(NAME, bad)
    with pytest.raises(SpecError):
        _deploy(provider, make_custom_model(tmp_path, "c"), {"new": 10, "old": 90})
    assert fake.vertex.received == []
    assert _far_end_split(fake) == {old: 90, new: 10}


def test_the_fake_refuses_a_split_vertex_would_refuse(
    provider: VertexProvider, fake: FakeVertex, canary: Any
) -> None:
    """The far end's own checks (not mlcloud's): a split that is not 100, or names a model
    that is not deployed, is INVALID_ARGUMENT (400 over REST)."""
    from google.api_core.exceptions import BadRequest
    from google.cloud import aiplatform_v1

    first, _, record = canary
    old, new = first.details["newest"], record.details["newest"]
    client = provider.clients.endpoints
    for split in ({old: 60, new: 60}, {old: 50, "999999": 50}):
        endpoint = aiplatform_v1.Endpoint(name=record.native_id, traffic_split=split)
        with pytest.raises(BadRequest):  # INVALID_ARGUMENT over REST
            client.update_endpoint(endpoint=endpoint, update_mask={"paths": ["traffic_split"]})
    assert _far_end_split(fake) == {old: 90, new: 10}
