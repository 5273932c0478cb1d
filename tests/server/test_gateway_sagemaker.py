"""The predict gateway in front of a SageMaker endpoint: the real boto3 runtime client of the
provider (its credentials stay on the server) against moto in server mode.

moto answers InvokeEndpoint from a queue of canned results, each with the production variant
that "served" it (sent back as the ``x-amzn-invoked-production-variant`` header, which boto3
reads as ``InvokedProductionVariant``), and remembers each request body it read: the test
asserts both ends. moto cannot make a model fail, so the ModelError translation (a model's 4xx
passed on, its 5xx a 502) is checked with botocore's Stubber against the real service model.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlcloud.config import Profile
from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.server import cloud_upstreams
from mlcloud.server.upstreams import VERSION_HEADER, Target, UpstreamFailure
from mlcloud.store import Store
from tests.providers.sagemaker.conftest import (  # noqa: F401 (fixtures)
    ACCOUNT,
    REGION,
    aws_env,
    far_end,
    settings,
)
from tests.providers.sagemaker.test_endpoints import deployment, model_dir
from tests.server.gateway_helpers import app_server, predict

pytestmark = pytest.mark.timeout(180)


def _received_bodies() -> list[Any]:
    """The request bodies moto's runtime read (it files each answer under them)."""
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    results = sagemakerruntime_backends[ACCOUNT][REGION].results
    return [
        json.loads(json.loads(base64.b64decode(key))["Body"])
        for per_endpoint in results.values()
        for key in per_endpoint
    ]


def _queue(moto: str, body: Any, variant: str) -> None:
    """moto's endpoint-results API: the next InvokeEndpoint answers ``body`` from ``variant``."""
    import httpx
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    sagemakerruntime_backends[ACCOUNT][REGION].results.clear()
    result = {"Body": json.dumps(body), "ContentType": "application/json",
              "InvokedProductionVariant": variant, "CustomAttributes": ""}  # fmt: skip
    resp = httpx.post(
        f"{moto}/moto-api/static/sagemaker/endpoint-results",
        json={"account_id": ACCOUNT, "region": REGION, "results": [result]},
    )
    assert resp.status_code in (200, 201)


def test_predict_through_the_sagemaker_runtime(
    aws_env: str,  # noqa: F811
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from providers.sagemaker import SageMakerProvider

    config = tmp_path / "mlcloud.yaml"
    config.write_text(yaml.safe_dump({"profiles": {"aws": {"type": "sagemaker", **settings()}}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(config))
    store = Store.open()
    provider = SageMakerProvider(Profile("aws", "sagemaker", settings()), store)
    provider.deploy(provider.plan_deploy(deployment(model_dir(tmp_path / "m"), "sm-gw")))
    with app_server() as url:
        rows = [[5.1, 3.5, 1.4, 0.2], [6.9, 3.1, 5.4, 2.1]]
        _queue(aws_env, {"predictions": [0, 2]}, "canary-7")
        body = json.dumps({"instances": rows}).encode()
        resp = predict(url, "sm-gw", body)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"predictions": [0, 2]}
        assert resp.headers[VERSION_HEADER] == "canary-7"  # from the runtime's header
        assert _received_bodies() == [{"instances": rows}]  # the bytes as the caller sent them

        # the endpoint gone behind mlcloud's back: the runtime's "not found" is the gateway's
        # upstream problem (502), not the caller's
        provider.clients.sagemaker.delete_endpoint(EndpointName="sm-gw")
        resp = predict(url, "sm-gw", body)
        assert resp.status_code == 502, resp.text
        assert resp.json()["kind"] == "UpstreamError" and "not found" in resp.json()["detail"]
        metrics = predict_metrics(url)
        assert 'endpoint="sm-gw",version="canary-7"' in metrics
    store.close()


def predict_metrics(url: str) -> str:
    import httpx

    return httpx.get(url + "/metrics", timeout=10).text


def _stubbed_target(error: dict[str, Any]) -> Target:
    import boto3
    from botocore.stub import Stubber

    runtime = boto3.client(
        "sagemaker-runtime", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    stub = Stubber(runtime)
    stub.add_client_error("invoke_endpoint", **error)
    stub.activate()

    class Clients:
        pass

    class Provider:
        clients = Clients()

    Provider.clients.runtime = runtime  # type: ignore[attr-defined]
    record = EndpointRecord("sm", "aws", "sagemaker", EndpointState.READY,
                            details={"traffic": {"AllTraffic": 100}})  # fmt: skip
    return Target("sm", "sagemaker", record, Provider())  # type: ignore[arg-type]


def test_model_errors_keep_the_callers_4xx_apart() -> None:
    refused = _stubbed_target(
        {
            "service_error_code": "ModelError",
            "service_message": "Received client error (400) from model",
            "http_status_code": 424,
            "modeled_fields": {"OriginalStatusCode": 400, "OriginalMessage": '{"error": "bad"}'},
        }
    )
    answer = cloud_upstreams.invoke(refused, b'{"instances": [1]}', "application/json", 5)
    assert (answer.status, answer.body, answer.version) == (400, b'{"error": "bad"}', "AllTraffic")
    failed = _stubbed_target(
        {
            "service_error_code": "ModelError",
            "service_message": "Received server error (500) from model",
            "http_status_code": 424,
            "modeled_fields": {"OriginalStatusCode": 500, "OriginalMessage": "boom"},
        }
    )
    with pytest.raises(UpstreamFailure) as caught:
        cloud_upstreams.invoke(failed, b'{"instances": [1]}', "application/json", 5)
    assert (caught.value.status, caught.value.upstream_status) == (502, 500)
    throttled = _stubbed_target(
        {"service_error_code": "ThrottlingException", "http_status_code": 400}
    )
    with pytest.raises(UpstreamFailure) as caught:
        cloud_upstreams.invoke(throttled, b'{"instances": [1]}', "application/json", 5)
    assert caught.value.status == 503 and caught.value.retry_after
