"""The Vertex provider in the shared endpoint conformance suite, against the fake Vertex server
(which serves each uploaded model version with mlcloud's own loader)."""

from __future__ import annotations

from mlcloud.specs import Deployment
from tests.conformance.endpoints import EndpointConformance


class TestVertexEndpointConformance(EndpointConformance):
    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name="x", model=model, replicas={"min": 1, "max": 2, "target": 4})
