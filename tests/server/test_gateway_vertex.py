"""The predict gateway in front of a Vertex AI endpoint: the provider's real PredictionService
client (REST, its credentials on the server) against the proto-strict fake, which serves each
deployed model with mlcloud's own loader and answers the ``deployedModelId`` that served it.

A canary split (80/20) shows attribution per request: every answer's ``x-mlcloud-version`` is
the deployed model whose scale produced it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from mlcloud.rollouts import stats as rollout_stats
from mlcloud.specs import Deployment
from providers.vertex import VertexProvider
from tests.conformance.endpoints import TRUSTED
from tests.fakes.vertex import FakeVertex
from tests.providers.vertex.conftest import fake, home, provider, settings_for  # noqa: F401
from tests.providers.vertex.test_endpoints import model_dir
from tests.server.gateway_helpers import app_server, predict

pytestmark = pytest.mark.timeout(180)

VERSION = "x-mlcloud-version"


def test_predict_through_vertex_with_a_canary(
    provider: VertexProvider,  # noqa: F811
    fake: FakeVertex,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "mlcloud.yaml"
    profile = {"type": "vertex", **settings_for(fake.url)}
    config.write_text(yaml.safe_dump({"profiles": {provider.name: profile}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    v1 = Deployment(name="iris", model=model_dir(tmp_path, 2.0), trust=TRUSTED)
    provider.deploy(provider.plan_deploy(v1))
    received: list[object] = []  # what the fake's predict handler parsed, then served as usual
    serve = fake.vertex._run_model

    def recording(model: object, rows: list[object]) -> list[object]:
        received.append(rows)
        return list(serve(model, rows))

    fake.vertex.predictor = recording
    with app_server() as url:
        resp = predict(url, "iris", b'{"instances": [[1.0, 2.0], [3.0, 4.0]]}')
        assert resp.status_code == 200, resp.text
        answer = resp.json()
        assert answer["predictions"] == [[2.0, 4.0], [6.0, 8.0]]
        assert resp.headers[VERSION] == answer["deployedModelId"]
        assert received == [[[1.0, 2.0], [3.0, 4.0]]]
        assert [p for m, p in fake.server.log if p.endswith(":predict")] == [
            "/v1/projects/mlcloud-test/locations/us-central1/endpoints/iris:predict"
        ]

        v2 = Deployment(name="iris", model=model_dir(tmp_path, 3.0), trust=TRUSTED,
                        traffic={"new": 20, "previous": 80})  # fmt: skip
        provider.deploy(provider.plan_deploy(v2))
        scales: dict[str, set[float]] = defaultdict(set)
        served: dict[str, int] = defaultdict(int)
        for _ in range(40):
            resp = predict(url, "iris", b'{"instances": [[1.0]]}', provider=provider.name)
            assert resp.status_code == 200, resp.text
            scales[resp.headers[VERSION]].add(resp.json()["predictions"][0][0])
            served[resp.headers[VERSION]] += 1
        assert sorted(scales.values()) == [{2.0}, {3.0}], "each version attributed correctly"
        # a rollout running in the server reads these per-version numbers
        for version, count in served.items():
            seen = rollout_stats.sample(provider, "iris", version, None)
            assert seen.requests >= count and seen.errors == 0 and seen.p99_ms is not None
        _errors_kept_apart(url, fake)


def _errors_kept_apart(url: str, far_end: FakeVertex) -> None:
    resp = predict(url, "iris", b"not json")
    assert resp.status_code == 400 and resp.json()["kind"] == "SpecError"
    far_end.inject("POST", r":predict$", "INVALID_ARGUMENT", "instance 0 has the wrong shape")
    resp = predict(url, "iris", b'{"instances": [[1.0]]}')
    assert resp.status_code == 400 and "wrong shape" in json.dumps(resp.json())
    far_end.inject("POST", r":predict$", "UNAVAILABLE", "the model server is restarting")
    resp = predict(url, "iris", b'{"instances": [[1.0]]}')
    assert resp.status_code == 503 and resp.json()["kind"] == "UpstreamUnavailable"
    far_end.inject("POST", r":predict$", "INTERNAL", "the container crashed")
    resp = predict(url, "iris", b'{"instances": [[1.0]]}')
    assert resp.status_code == 502 and resp.json()["kind"] == "UpstreamError"
