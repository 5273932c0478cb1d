"""The Vertex provider in the shared endpoint conformance suite, against the fake Vertex server
(which serves each uploaded model version with mlcloud's own loader). ``received_deploy`` is what
the fake received, decoded into the plan's own format (see ``test_conformance``)."""

from __future__ import annotations

from mlcloud.provider import Provider
from mlcloud.records import EndpointRecord, Plan
from mlcloud.specs import Deployment
from tests.conformance.endpoints import EndpointConformance
from tests.conformance.jobs import Sent
from tests.providers.vertex.test_conformance import fake_of


class TestVertexEndpointConformance(EndpointConformance):
    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name="x", model=model, replicas={"min": 1, "max": 2, "target": 4})

    def far_end_traffic(self, provider: Provider, name: str) -> dict[str, int] | None:
        # the fake's own endpoint: every deployed model, those without a share at 0
        endpoint = next(
            e for e in fake_of(provider).vertex.endpoints.values() if e.name.endswith(f"/{name}")
        )
        return {dm.id: endpoint.traffic_split.get(dm.id, 0) for dm in endpoint.deployed_models}

    def received_deploy(
        self, provider: Provider, plan: Plan[Deployment], record: EndpointRecord
    ) -> Sent:
        return list(fake_of(provider).vertex.received)
