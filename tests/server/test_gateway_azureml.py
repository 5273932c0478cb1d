"""The predict gateway in front of an Azure ML online endpoint: the provider's real MLClient (its
credentials and the endpoint key stay on the server) against the in-process workspace fake,
whose scoring handler serves each deployment's uploaded model with mlcloud's own loader and
names the deployment that answered (``azureml-model-deployment``).

The fake lives under the SDK's transport in this process, so the gateway runs in this process
too (uvicorn in a thread).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcloud.specs import Deployment
from mlcloud.store import Store
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import SETTINGS, azure, home, make_provider, store  # noqa: F401
from tests.server.gateway_helpers import app_server, predict

pytestmark = pytest.mark.timeout(180)

VERSION = "x-mlcloud-version"


def test_predict_through_the_scoring_uri(
    azure: Installed,  # noqa: F811
    store: Store,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "mlcloud.yaml"
    config.write_text(yaml.safe_dump({"profiles": {"azure": {"type": "azureml", **SETTINGS}}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    provider: Any = make_provider(store)
    blue = provider.deploy(
        provider.plan_deploy(
            Deployment(name="ep1", model=str(make_custom_model(tmp_path, "a")), trust=TRUSTED)
        )
    ).details["deployment"]
    canary = Deployment(name="ep1", model=str(make_custom_model(tmp_path, "b")), trust=TRUSTED,
                        traffic={"new": 20, blue: 80})  # fmt: skip
    provider.deploy(provider.plan_deploy(canary))
    with app_server() as url:
        body = b'{"instances": [[1, 2], [3]]}'
        resp = predict(url, "ep1", body, **{"azureml-model-deployment": "not-passed-on"})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"predictions": ["a", "a"]}
        # the fake routes to the heaviest deployment (blue, 80%) and says so
        assert azure.fake.scored[-1]["served_by"] == blue == resp.headers[VERSION]
        score = azure.transport.find("POST", "/ep1/score")[-1]
        assert score.headers["Authorization"] == "Bearer key-ep1"  # the key, server-side
        assert "azureml-model-deployment" not in {k.lower() for k in score.headers}
        assert score.body == body  # the bytes as the caller sent them

        # the caller's bad request: Azure's own 400, passed on
        resp = predict(url, "ep1", b'{"rows": [1]}')
        assert resp.status_code == 400, resp.text
        assert "instances" in json.dumps(resp.json())
        # the endpoint deleted behind mlcloud's back: the gateway's 502, not the caller's 404
        provider.clients.ml.online_endpoints.begin_delete("ep1").result()
        resp = predict(url, "ep1", body)
        assert resp.status_code == 502, resp.text
