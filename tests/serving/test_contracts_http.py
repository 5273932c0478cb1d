"""Each cloud's serving contract: the container entrypoint run with that cloud's environment
(see the ``farm`` fixture), called over HTTP exactly as the platform calls it."""

from __future__ import annotations

import httpx
import pytest

from tests.benchmarks.serving_procs import Server
from tests.serving.conftest import IRIS_ROW, VERTEX_BASE, Farm

pytestmark = pytest.mark.slow

PAYLOAD = {"instances": [IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]}
EXPECTED = {"predictions": [0, 2]}


@pytest.fixture(scope="module")
def servers(farm: Farm) -> dict[str, Server]:
    return farm.servers


def test_sagemaker_runs_the_built_bento(servers: dict[str, Server], farm: Farm) -> None:
    with httpx.Client(base_url=servers["sagemaker"].url(""), timeout=30) as c:
        ping = c.get("/ping")
        assert ping.status_code == 200
        # Served from the Bento, with the model baked in at build time (no model variable set).
        assert farm.bento is not None
        assert ping.json()["model_sha256"].startswith(farm.bento.bento_tag.split(":")[1])
        resp = c.post("/invocations", json=PAYLOAD)  # what InvokeEndpoint forwards
        assert resp.status_code == 200, resp.text
        assert resp.json() == EXPECTED
        params = c.get("/execution-parameters").json()
        assert params["BatchStrategy"] == "MULTI_RECORD" and params["MaxPayloadInMB"] >= 1
        bad = c.post("/invocations", json={"instances": [[1, 2]]})
        assert bad.status_code == 422 and "expected [-1, 4]" in bad.json()["error"]


def test_sagemaker_started_exactly_as_sagemaker_does(farm: Farm) -> None:
    """`docker run IMAGE serve`: port 8080, the model in /opt/ml/model (root-owned, 0600),
    no variable naming SageMaker; then a batch-transform request (MULTI_RECORD CSV)."""
    if "sagemaker_exact" in farm.skipped:
        pytest.skip(farm.skipped["sagemaker_exact"])
    server = farm.servers["sagemaker_exact"]
    assert server.port == 8080
    with httpx.Client(base_url=server.url(""), timeout=30) as c:
        ping = c.get("/ping")
        assert ping.status_code == 200 and ping.json()["contract"] == "sagemaker"
        assert c.post("/invocations", json=PAYLOAD).json() == EXPECTED
        params = c.get("/execution-parameters").json()
        assert params["BatchStrategy"] == "MULTI_RECORD"
        rows = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n"
        resp = c.post("/invocations", content=rows, headers={"content-type": "text/csv"})
        assert resp.status_code == 200 and resp.text == "0\n2\n"
    assert "sagemaker contract, SageMaker expects root" in server.log_tail(100_000)


def test_vertex(servers: dict[str, Server], farm: Farm) -> None:
    # AIP_STORAGE_URI was gs://…, served by the GCS fake: the entrypoint downloaded it
    assert f"downloaded {farm.vertex_uri} to" in servers["vertex"].log_tail(100_000)
    with httpx.Client(base_url=servers["vertex"].url(""), timeout=30) as c:
        health = c.get(VERTEX_BASE)
        assert health.status_code == 200 and health.json()["status"] == "ready"
        resp = c.post(f"{VERTEX_BASE}:predict", json={**PAYLOAD, "parameters": {}})
        assert resp.status_code == 200, resp.text
        assert resp.json() == EXPECTED
        bad = c.post(
            f"{VERTEX_BASE}:predict", content=b"{", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]


def test_azureml(servers: dict[str, Server]) -> None:
    with httpx.Client(base_url=servers["azureml"].url(""), timeout=30) as c:
        assert c.get("/").status_code == 200  # liveness
        ready = c.get("/health")
        assert ready.status_code == 200 and ready.json()["contract"] == "azureml"
        resp = c.post("/score", json=PAYLOAD)
        assert resp.status_code == 200, resp.text
        assert resp.json() == EXPECTED
        assert (
            c.post("/score", content=b"x", headers={"content-type": "text/plain"}).status_code
            == 415
        )
