"""The control-plane API on a real server with real local jobs: submit (JSON and YAML), dry-run,
list, show, cancel, logs as server-sent events, problem JSON for each error kind, OpenAPI, and
the Python client (:mod:`mlcloud.client`) getting the same records and error classes back."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from mlcloud import errors
from mlcloud.client import Client
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from tests.conformance.endpoints import make_custom_model
from tests.server.serverproc import RunningServer, start_server, token

pytestmark = pytest.mark.timeout(180)

CHATTY = (
    "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.3)\n"
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-api")


@pytest.fixture(scope="module")
def admin(home: Path) -> str:
    return token(home, "alice", "admin")


@pytest.fixture(scope="module")
def server(home: Path, admin: str) -> Iterator[RunningServer]:
    srv = start_server(home)
    yield srv
    srv.stop()


@pytest.fixture
def http(server: RunningServer, admin: str) -> Iterator[httpx.Client]:
    with server.client(admin) as client:
        yield client


def job_spec(tmp_path: Path, script: str, **fields: object) -> dict[str, object]:
    (tmp_path / "main.py").write_text(script)
    return {"name": "t", "source": str(tmp_path), "command": [sys.executable, "main.py"], **fields}


def sse(response: httpx.Response) -> list[tuple[str, str]]:
    events, event, data = [], "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                events.append((event, "\n".join(data)))
            event, data = "message", []
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("event: "):
            event = line[7:]
    return events


def own(events: list[tuple[str, str]]) -> list[str]:
    """The job's own lines (not the supervisor's ``[mlcloud]`` ones)."""
    return [data for event, data in events if not data.startswith("[mlcloud]")]


def test_health_ready_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready"}
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}:cancel", "/v1/jobs/{job_id}/logs",
            "/v1/endpoints", "/v1/endpoints/{name}"} <= set(paths)  # fmt: skip
    assert http.get("/docs").status_code == 200


def test_submit_yaml_and_stream_logs(http: httpx.Client, tmp_path: Path) -> None:
    body = yaml.safe_dump(job_spec(tmp_path, CHATTY))
    answer = http.post("/v1/jobs", content=body, headers={"content-type": "application/yaml"})
    assert answer.status_code == 201, answer.text
    record = answer.json()
    assert record["provider"] == "local" and record["state"] in ("PENDING", "RUNNING")
    with http.stream("GET", f"/v1/jobs/{record['id']}/logs", params={"follow": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == ("end", json.dumps({"state": "SUCCEEDED"}))
    assert own(events[:-1]) == ["line 0", "line 1", "line 2"]
    assert events[0] == ("message", "[mlcloud] attempt 1/1 started")  # the supervisor's lines too
    with http.stream("GET", f"/v1/jobs/{record['id']}/logs") as r:  # not following: same log
        assert sse(r)[:-1] == events[:-1]
    shown = http.get(f"/v1/jobs/{record['id']}").json()
    assert shown["state"] == "SUCCEEDED" and shown["exit_code"] == 0
    assert [e["state"] for e in shown["events"]][-1] == "SUCCEEDED"
    listed = http.get("/v1/jobs", params={"limit": 5}).json()
    assert record["id"] in [r["id"] for r in listed]


def test_dry_run_sends_nothing(http: httpx.Client, tmp_path: Path) -> None:
    before = len(http.get("/v1/jobs").json())
    answer = http.post("/v1/jobs", params={"dry_run": True}, json=job_spec(tmp_path, "pass"))
    assert answer.status_code == 200
    plan = answer.json()["plan"]
    assert plan["provider"] == "local" and plan["steps"][0]["call"] == "local.Popen"
    assert plan["steps"][0]["request"]["cwd"] == str(tmp_path)
    assert len(http.get("/v1/jobs").json()) == before


def test_cancel(http: httpx.Client, tmp_path: Path) -> None:
    spec = job_spec(tmp_path, "import time\ntime.sleep(120)\n")
    job_id = http.post("/v1/jobs", json=spec).json()["id"]
    answer = http.post(f"/v1/jobs/{job_id}:cancel")
    assert answer.status_code == 200 and answer.json()["state"] == "CANCELLED"
    assert http.post(f"/v1/jobs/{job_id}:cancel").json()["state"] == "CANCELLED"  # idempotent


def problem_of(answer: httpx.Response) -> dict[str, object]:
    assert answer.headers["content-type"] == "application/problem+json", answer.text
    body = answer.json()
    assert body["status"] == answer.status_code and body["title"] == body["kind"]
    return body


def test_problem_json_per_error_kind(http: httpx.Client, tmp_path: Path) -> None:
    s3 = job_spec(tmp_path, "pass", inputs={"train": "s3://bucket/data"})
    tampered = make_custom_model(tmp_path, "x")
    (tampered / "conformance_predictor.py").write_text("print('changed')\n")
    cases = [
        (http.get("/v1/jobs/nope"), 404, "NotFoundLocally", "mlcloud jobs list"),
        (http.post("/v1/jobs", content=b"name: x\n"), 422, "SpecError", "mlcloud schema job"),
        (http.post("/v1/jobs", content=b"{not yaml"), 422, "SpecError", None),
        (http.post("/v1/jobs", params={"provider": "nosuch", "dry_run": True},
                   json=job_spec(tmp_path, "pass")), 400, "ConfigError", None),
        (http.post("/v1/jobs", params={"dry_run": True}, json=s3), 422, "UnsupportedFeature",
         "local path"),
        (http.post("/v1/endpoints", json={"model": str(tampered), "name": "m"}), 500,
         "ModelDirError", None),
        (http.post("/v1/endpoints", json={"model": "x", "name": "m", "bogus": 1}), 422,
         "SpecError", None),
        (http.get("/v1/nothing-here"), 404, "HTTPError", None),
    ]  # fmt: skip
    for answer, status, kind, hint in cases:
        body = problem_of(answer)
        assert (answer.status_code, body["kind"]) == (status, kind), body
        if hint is not None:
            assert hint in str(body["hint"]), body
    unsupported = problem_of(cases[4][0])
    assert (
        unsupported["feature"] == "input 'train' s3:// URIs"
        and unsupported["provider"] == "local (profile 'local')"
    )
    model_error = problem_of(cases[5][0])
    assert model_error["kinds"] == ["ModelDirError", "ModelError", "MlcloudError"]


def test_client_gets_records_and_error_classes(
    server: RunningServer, admin: str, tmp_path: Path
) -> None:
    remote = Client(server.url, token=admin)
    job = remote.train(TrainingJob.model_validate(job_spec(tmp_path, CHATTY)))
    lines = list(job.logs(follow=True))
    assert own([("message", line) for line in lines]) == ["line 0", "line 1", "line 2"]
    final = job.wait(timeout=60)
    assert final.state is JobState.SUCCEEDED and final.exit_code == 0
    assert [r.id for r in remote.list_jobs(limit=100)].count(job.id) == 1
    with pytest.raises(errors.NotFoundLocally) as missing:
        remote.job("nope")
    assert missing.value.hint == "list jobs with: mlcloud jobs list"
    spec = TrainingJob.model_validate(job_spec(tmp_path, "pass", inputs={"train": "s3://b/d"}))
    with pytest.raises(errors.UnsupportedFeature) as unsupported:
        remote.plan(spec)
    assert unsupported.value.feature == "input 'train' s3:// URIs"
    tampered = make_custom_model(tmp_path, "y")
    (tampered / "conformance_predictor.py").write_text("print('changed')\n")
    with pytest.raises(errors.ModelError):  # the server's ModelDirError, nearest known class
        remote.deploy(str(tampered), "m")
    plan = remote.plan_deploy(str(make_custom_model(tmp_path, "z")), "z", trust_code=True)
    assert plan.type == "local" and plan.steps
    with pytest.raises(errors.Transient, match="does not answer"):
        Client("http://127.0.0.1:9").list_jobs()
    remote.close()


def test_models_registry_through_the_api(server: RunningServer, admin: str, home: Path,
                                         tmp_path: Path) -> None:  # fmt: skip
    remote = Client(server.url, token=admin)
    one = remote.register_model(str(make_custom_model(tmp_path, "v1")), "iris", alias="champion")
    two = remote.register_model(str(make_custom_model(tmp_path, "v2")), "iris")
    assert (one.ref, two.ref) == ("iris:1", "iris:2")
    assert [m["name"] for m in remote.list_models()] == ["iris"]
    moved = remote.move_alias("iris", "champion", 2, reason="better")
    assert (moved.from_version, moved.to_version, moved.by) == (1, 2, "alice")  # the token's name
    back = remote.rollback_model("iris", "champion", reason="worse in prod")
    assert (back.from_version, back.to_version, back.by) == (2, 1, "alice")
    assert [m.to_version for m in remote.alias_history("iris")][-2:] == [2, 1]
    champion = remote.model("iris@champion")
    assert (champion["ref"], champion["aliases"]) == ("iris:1", ["champion"])
    assert remote.model("iris")["aliases"] == {"champion": 1}
    with pytest.raises(errors.Conflict):  # champion points at version 1
        remote.delete_model_version("iris", 1)
    remote.delete_model_version("iris", 2)
    with pytest.raises(errors.NotFoundLocally):
        remote.model("nosuch")
    read = token(home, "viewer", "read")
    with server.client(read) as http:
        assert http.get("/v1/models").status_code == 200
        assert http.put("/v1/models/iris/aliases/champion", json={"version": 1}).status_code == 403
    remote.close()
