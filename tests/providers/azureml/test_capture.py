"""Azure ML's native capture: the online deployment's data collector, against the fake workspace.

The plan's deployment PUT carries ``dataCollector`` (request and response payload collections at
the deployment's sampling rate); the fake records the body as the service received it. The fake
does not run the collector, so its files are put in the fake's workspaceblobstore where and as
Azure writes them (CloudEvents JSON Lines), and ``read_window`` reads them back through the
SDK's datastore access and the real azure-storage-blob client.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from mlcloud.monitor.capture import read_window
from mlcloud.specs import Deployment
from providers.azureml import AzureMLProvider
from providers.azureml.capture import blob_name
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.fakes.azureml import Installed
from tests.providers.common.golden import check_golden, masked

NAME = "ep-capture"
CONTAINER = "azureml-blobstore"  # the fake workspaceblobstore's container
WORKSPACE = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
)


def _event(kind: str, when: datetime, data: object, correlation: str) -> str:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"{kind}-{correlation}",
            "source": f"{WORKSPACE}/onlineEndpoints/{NAME}",
            "type": f"azureml.inference.{kind}",
            "datacontenttype": "application/json",
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "data": data,
            "path": "/score",
            "method": "POST",
            "correlationid": correlation,
            "xrequestid": f"x-{correlation}",
        }
    )


def test_the_deployment_gets_a_data_collector(
    provider: AzureMLProvider, azure: Installed, tmp_path: Path
) -> None:
    model = make_custom_model(tmp_path, "a")
    dep = Deployment(name=NAME, model=str(model), trust=TRUSTED, capture={"sample": 0.2})
    plan = provider.plan_deploy(dep)
    check_golden("azureml", "deploy-capture", masked(plan, str(tmp_path)))
    record = provider.deploy(plan)
    received = azure.fake.received
    (put,) = [w.request for w in received if w.call == "onlineDeployments.CreateOrUpdate"]
    collector = put["properties"]["dataCollector"]
    assert set(collector["collections"]) == {"request", "response"}
    assert {c["samplingRate"] for c in collector["collections"].values()} == {0.2}
    assert all(c["dataCollectionMode"] == "enabled" for c in collector["collections"].values())

    # what the collector writes, read back
    deployment = next(iter(record.details["traffic"]))
    now = datetime.now(UTC)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    requests = [
        _event("request", now - timedelta(minutes=1), {"instances": rows}, "c1"),
        _event("request", now - timedelta(hours=2), {"instances": [[1, 1, 1, 1]]}, "c0"),
    ]
    answers = [_event("response", now - timedelta(minutes=1), {"predictions": [0, 2]}, "c1")]
    blobs = azure.fake.blobs
    for collection, lines in (("request", requests), ("response", answers)):
        blobs[f"{CONTAINER}/{blob_name(NAME, deployment, collection, now)}"] = "\n".join(
            lines
        ).encode()
    window = read_window(record, (now - timedelta(minutes=30)).timestamp(), provider=provider)
    assert len(window) == 2
    np.testing.assert_allclose(window.features, rows)
    assert list(window.predictions) == [0, 2]
    assert set(window.request_ids) == {"x-c1"}
    assert set(window.versions) == {deployment}
    provider.undeploy(NAME)


def test_no_capture_no_collector(provider: AzureMLProvider, tmp_path: Path) -> None:
    dep = Deployment(name="plain", model=str(make_custom_model(tmp_path, "a")), trust=TRUSTED)
    plan = provider.plan_deploy(dep)
    (put,) = [s.request for s in plan.steps if s.call == "onlineDeployments.CreateOrUpdate"]
    assert "dataCollector" not in put["properties"]
