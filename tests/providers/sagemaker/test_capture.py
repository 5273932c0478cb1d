"""SageMaker's native capture, against moto in server mode.

The deploy plan turns on ``DataCaptureConfig`` when the deployment has ``capture``; moto receives
it (asserted at the far end). moto does not run models, so the capture files are written into
moto's S3 where and as SageMaker writes them (documented format: JSON-encoded, CSV and base64
payloads), and ``read_window`` reads them back through the provider's own boto3 client.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcloud.monitor.capture import read_window
from mlcloud.specs import Deployment
from providers.sagemaker import SageMakerProvider
from providers.sagemaker.capture import object_key, parse_line
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.conformance.jobs import planned
from tests.providers.common.golden import check_golden, masked
from tests.providers.sagemaker.far_end import Recorder

NAME = "ep-capture"


def _line(when: datetime, rows: list[list[float]], preds: list[int], rid: str) -> str:
    """One line as SageMaker writes it for a JSON request listed in JsonContentTypes."""
    return json.dumps(
        {
            "captureData": {
                "endpointInput": {
                    "observedContentType": "application/json",
                    "mode": "INPUT",
                    "data": json.dumps({"instances": rows}),
                    "encoding": "JSON",
                },
                "endpointOutput": {
                    "observedContentType": "application/json",
                    "mode": "OUTPUT",
                    "data": json.dumps({"predictions": preds}),
                    "encoding": "JSON",
                },
            },
            "eventMetadata": {
                "eventId": "3a1b2c3d-0000-4000-8000-000000000001",
                "inferenceId": rid,
                "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            },
            "eventVersion": "0",
        }
    )


def _csv_line(when: datetime) -> str:
    """A CSV request whose content type was not listed: SageMaker stores it base64."""
    return json.dumps(
        {
            "captureData": {
                "endpointInput": {
                    "observedContentType": "text/csv",
                    "mode": "INPUT",
                    "data": base64.b64encode(b"6.7,3.0,5.2,2.3\n").decode(),
                    "encoding": "BASE64",
                },
                "endpointOutput": {
                    "observedContentType": "text/csv; charset=utf-8",
                    "mode": "OUTPUT",
                    "data": "2",
                    "encoding": "CSV",
                },
            },
            "eventMetadata": {
                "eventId": "3a1b2c3d-0000-4000-8000-000000000002",
                "inferenceTime": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
            "eventVersion": "0",
        }
    )


@pytest.fixture
def deployed(provider: SageMakerProvider, far_end: Recorder, tmp_path: Path) -> Any:
    model = make_custom_model(tmp_path, "a")
    dep = Deployment(name=NAME, model=str(model), trust=TRUSTED, capture={"sample": 0.25})
    plan = provider.plan_deploy(dep)
    record = provider.deploy(plan)
    yield plan, record
    provider.undeploy(NAME)


def test_the_plan_turns_on_data_capture(
    provider: SageMakerProvider, far_end: Recorder, deployed: Any, tmp_path: Path
) -> None:
    plan, _ = deployed
    check_golden("sagemaker", "deploy-capture", masked(plan, str(tmp_path)))
    assert far_end.sent() == planned(plan)
    (config,) = [s.request for s in plan.steps if s.call == "sagemaker.CreateEndpointConfig"]
    capture = config["DataCaptureConfig"]
    assert capture["InitialSamplingPercentage"] == 25
    assert capture["DestinationS3Uri"] == f"s3://{provider.settings.bucket}/mlcloud/capture"
    described = provider.clients.sagemaker.describe_endpoint_config(
        EndpointConfigName=config["EndpointConfigName"]
    )
    assert described["DataCaptureConfig"]["InitialSamplingPercentage"] == 25  # moto kept it


def test_a_deploy_without_capture_sends_none(provider: SageMakerProvider, tmp_path: Path) -> None:
    dep = Deployment(name="plain", model=str(make_custom_model(tmp_path, "a")), trust=TRUSTED)
    plan = provider.plan_deploy(dep)
    (config,) = [s.request for s in plan.steps if s.call == "sagemaker.CreateEndpointConfig"]
    assert "DataCaptureConfig" not in config


def test_read_window_reads_what_sagemaker_wrote(provider: SageMakerProvider, deployed: Any) -> None:
    _, record = deployed
    variant = next(iter(record.details["traffic"]))
    s3 = provider.clients.s3
    now = datetime.now(UTC).replace(microsecond=0)
    hour_ago = now - timedelta(hours=1, minutes=5)
    bucket = str(provider.settings.bucket)
    first = _line(now - timedelta(seconds=30), [[5.1, 3.5, 1.4, 0.2]], [0], "req-1")
    lines = [first, _csv_line(now)]
    s3.put_object(Bucket=bucket, Key=object_key(provider.settings, NAME, variant, now),
                  Body="\n".join(lines) + "\n")  # fmt: skip
    old = _line(hour_ago, [[1.0, 1.0, 1.0, 1.0]], [1], "req-old")
    s3.put_object(Bucket=bucket, Key=object_key(provider.settings, NAME, variant, hour_ago),
                  Body=old + "\n")  # fmt: skip

    since = (now - timedelta(minutes=10)).timestamp()
    window = read_window(record, since, now.timestamp() + 1, provider=provider)
    assert len(window) == 2
    np.testing.assert_allclose(window.features, [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert list(window.predictions) == [0, 2]
    assert window.request_ids[0] == "req-1"
    assert window.request_ids[1] == "3a1b2c3d-0000-4000-8000-000000000002"  # no inferenceId
    assert set(window.versions) == {variant}
    wide = read_window(record, hour_ago.timestamp() - 1, now.timestamp() + 1, provider=provider)
    assert len(wide) == 3 and wide.request_ids[0] == "req-old"


def test_parse_line_ignores_what_is_not_a_capture_line() -> None:
    assert parse_line("{}", "v") is None
    assert parse_line("not json", "v") is None
