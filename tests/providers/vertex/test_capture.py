"""Vertex AI's native capture: request-response logging to BigQuery, against the fake Vertex.

The plan sets ``predictRequestResponseLoggingConfig`` on CreateEndpoint (and UpdateEndpoint when
an existing endpoint starts capturing); the fake parses the real protos, so what it stored is
what Vertex would. There is no BigQuery here: ``read_window`` reads a fixture in BigQuery's
newline-delimited JSON export format of the documented logging table.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlcloud.monitor.capture import read_window
from mlcloud.specs import Deployment
from providers.vertex import VertexProvider
from providers.vertex.capture import ENV_EXPORT, parse_row
from tests.conformance.endpoints import TRUSTED, make_custom_model
from tests.fakes.vertex import FakeVertex
from tests.providers.common.golden import check_golden, masked

NAME = "ep-capture"


def _endpoint(fake: FakeVertex, name: str = NAME) -> Any:
    (endpoint,) = [e for e in fake.vertex.endpoints.values() if e.name.endswith(f"/{name}")]
    return endpoint


def test_create_endpoint_turns_on_the_log(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    dep = Deployment(
        name=NAME, model=str(make_custom_model(tmp_path, "a")), trust=TRUSTED,
        capture={"sample": 0.1},
    )  # fmt: skip
    plan = provider.plan_deploy(dep)
    check_golden("vertex", "deploy-capture", masked(plan, str(tmp_path)))
    provider.deploy(plan)
    config = _endpoint(fake).predict_request_response_logging_config
    assert config.enabled and config.sampling_rate == pytest.approx(0.1)
    assert config.bigquery_destination.output_uri == "bq://mlcloud-test.mlcloud_capture.ep_capture"
    (created,) = fake.vertex.calls("EndpointService.CreateEndpoint")
    create = "EndpointService.CreateEndpoint"
    (planned_create,) = [s.request for s in plan.steps if s.call == create]
    logged = planned_create["endpoint"]["predictRequestResponseLoggingConfig"]
    assert created["endpoint"]["predictRequestResponseLoggingConfig"] == logged


def test_an_existing_endpoint_gets_update_endpoint(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path
) -> None:
    model = str(make_custom_model(tmp_path, "a"))
    provider.deploy(provider.plan_deploy(Deployment(name="later", model=model, trust=TRUSTED)))
    assert not _endpoint(fake, "later").predict_request_response_logging_config.enabled
    dep = Deployment(name="later", model=model, trust=TRUSTED, capture={"sample": 0.5})
    plan = provider.plan_deploy(dep)
    (update,) = [s.request for s in plan.steps if s.call == "EndpointService.UpdateEndpoint"]
    assert update["updateMask"] == "predictRequestResponseLoggingConfig"
    provider.deploy(plan)
    (sent,) = fake.vertex.calls("EndpointService.UpdateEndpoint")
    assert sent["updateMask"] == "predictRequestResponseLoggingConfig"
    config = _endpoint(fake, "later").predict_request_response_logging_config
    assert config.enabled and config.sampling_rate == pytest.approx(0.5)


def _row(when: datetime, rows: list[list[float]], preds: list[int], rid: str, dm: str) -> str:
    """A row of the logging table as ``bq extract --destination_format NEWLINE_DELIMITED_JSON``
    writes it: TIMESTAMP as "YYYY-MM-DD HH:MM:SS.ffffff UTC", NUMERIC as a string."""
    return json.dumps(
        {
            "endpoint": f"projects/mlcloud-test/locations/us-central1/endpoints/{NAME}",
            "deployed_model_id": dm,
            "logging_time": when.strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
            "request_id": rid,
            "request_payload": [json.dumps({"instances": rows})],
            "response_payload": [json.dumps({"predictions": preds, "deployedModelId": dm})],
        }
    )


def test_read_window_reads_the_bigquery_export(
    provider: VertexProvider, fake: FakeVertex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = Deployment(
        name=NAME, model=str(make_custom_model(tmp_path, "a")), trust=TRUSTED,
        capture={"sample": 1.0},
    )  # fmt: skip
    record = provider.deploy(provider.plan_deploy(dep))
    dm = next(iter(record.details["traffic"]))
    now = datetime.now(UTC)
    export = tmp_path / "export"
    export.mkdir()
    lines = [
        _row(now - timedelta(hours=3), [[1.0, 1.0, 1.0, 1.0]], [1], "111", dm),
        _row(now - timedelta(minutes=2), [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], [0, 2],
             "8034723498237", dm),
    ]  # fmt: skip
    (export / "000000000000.json").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(ENV_EXPORT, str(export))
    window = read_window(record, (now - timedelta(hours=1)).timestamp(), provider=provider)
    assert len(window) == 2
    np.testing.assert_allclose(window.features, [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    assert list(window.predictions) == [0, 2]
    assert set(window.request_ids) == {"8034723498237"}
    assert set(window.versions) == {dm}


def test_parse_row_needs_a_time() -> None:
    assert parse_row({"request_payload": ["{}"]}) is None
