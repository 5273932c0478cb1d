"""The Ray provider passes the endpoint conformance suite on a real Ray cluster (head + worker):
each endpoint is a Ray Serve application, deleted at the end of its test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlcloud import modeldir
from mlcloud.provider import Provider
from mlcloud.records import EndpointRecord, Plan
from mlcloud.specs import Deployment
from providers.ray.endpoint_plan import PUT_APPLICATIONS
from providers.ray.endpoints import serve_details
from providers.ray.provider import RayProvider
from tests.conformance.endpoints import EndpointConformance
from tests.conformance.jobs import Sent
from tests.providers.ray.conftest import RayCluster

pytestmark = pytest.mark.timeout(300)


def trusted(name: str, model: str, **extra: Any) -> Deployment:
    """A deployment of ``model`` with the grant ``mlcloud deploy --trust-code`` gives (the
    conformance models are custom predictors: code the loader runs only when trusted)."""
    grant = {"by": "trust-code", "digest": modeldir.digest(Path(model))}
    return Deployment(name=name, model=model, trust=grant, **extra)


def received_config(provider: RayProvider, name: str) -> dict[str, Any]:
    """What Serve holds for the application ``name`` (``GET /api/serve/applications/``), in
    the plan's format: the proxy options the plan sets and the application's config."""
    details = serve_details(provider)
    http = details["http_options"]
    return {
        "proxy_location": details["proxy_location"],
        "http_options": {"host": http["host"], "port": http["port"]},
        "applications": [details["applications"][name]["deployed_app_config"]],
    }


class TestRayEndpoints(EndpointConformance):
    @pytest.fixture
    def provider(self, ray_cluster: RayCluster) -> Provider:
        return ray_cluster.provider()

    def make_deployment(self, name: str, model: str) -> Deployment:
        return trusted(name, model)

    def unsupported_deployment(self, model: str) -> Deployment | None:
        return Deployment(name="split", model=model, traffic={"a": 50, "b": 50})

    def received_deploy(
        self, provider: Provider, plan: Plan[Deployment], record: EndpointRecord
    ) -> Sent:
        assert isinstance(provider, RayProvider)
        return [(PUT_APPLICATIONS, received_config(provider, plan.id))]
