"""Jobs through the real MLClient against the fake workspace: bodies, uploads, attempts, logs."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import pytest

from mlcloud import api
from mlcloud.errors import Conflict, NotFound, PermissionDenied, QuotaExceeded
from mlcloud.records import JobState
from mlcloud.specs import TrainingJob
from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import write_source


def _job(tmp_path: Path, **kw: Any) -> TrainingJob:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "rows.csv").write_text("1,2\n")
    base: dict[str, Any] = {
        "name": "fit",
        "source": str(write_source(tmp_path / "src")),
        "command": ["python", "train.py"],
        "framework": {"name": "sklearn", "version": "1.5"},
        "inputs": {"train": str(data)},
        "hyperparameters": {"lr": 0.1},
    }
    return TrainingJob.model_validate({**base, **kw})


def _put_body(azure: Installed, native: str) -> dict[str, Any]:
    puts = azure.transport.find("PUT", f"/jobs/{native}?")
    assert len(puts) == 1
    body: dict[str, Any] = puts[0].json()
    return body


def test_submit_sends_the_planned_body_and_uploads_code(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    plan = provider.plan_job(_job(tmp_path))
    record = provider.submit_job(plan)
    assert record.state is JobState.PENDING and record.native_id == plan.id
    sent = _put_body(azure, plan.id)

    # What the plan could not know before upload, the SDK filled in; the rest is identical.
    expected = copy.deepcopy(dict(plan.steps[0].request))
    code_id = record.details["code_id"]
    assert code_id.startswith(azure.fake.ws_path + "/codes/") and code_id.endswith("/versions/1")
    expected["properties"]["codeId"] = code_id
    uploaded = sent["properties"]["inputs"]["train"]["uri"]
    assert uploaded.startswith("azureml://datastores/workspaceblobstore/paths/LocalUpload/")
    expected["properties"]["inputs"]["train"]["uri"] = uploaded
    sent["properties"].pop("properties")  # git facts of the working directory
    expected["properties"].pop("properties")
    assert sent == expected

    # The staged code: the user's files, the launcher and the vendored runtime, hashed.
    code_put = azure.transport.find("PUT", code_id)[0].json()["properties"]
    assert code_put["isAnonymous"] is True and len(code_put["properties"]["hash_sha256"]) == 64
    names = {k.split("/", 2)[2] for k in azure.fake.blobs if k.startswith("azureml-blobstore-")}
    assert {"train.py", "_mlcloud/launcher.py", "_mlcloud/vendor/mlcloud/runtime.py"} <= names
    assert any(k.endswith("/data/rows.csv") for k in azure.fake.blobs)  # the local input
    assert record.outputs["model_dir"] == (
        f"azureml://datastores/workspaceblobstore/paths/mlcloud/jobs/{plan.id}/model"
    )
    assert provider.store.get_job(plan.id).native_id == plan.id
    # every ARM call carried the fake bearer token; none carried it to blob storage
    arm = [r for r in azure.transport.requests if "management.azure.com" in r.url]
    assert arm and all(r.headers.get("Authorization") == "Bearer fake-token" for r in arm)


def test_same_code_is_not_uploaded_twice(provider: Any, azure: Installed, tmp_path: Path) -> None:
    job = _job(tmp_path)
    first = provider.submit_job(provider.plan_job(job))
    uploads = len(azure.transport.find("POST", "startPendingUpload"))
    second = provider.submit_job(provider.plan_job(job))
    assert len(azure.transport.find("POST", "startPendingUpload")) == uploads == 1
    assert first.details["code_id"] == second.details["code_id"]


def test_states_are_mapped(provider: Any, azure: Installed, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    for status, state in [
        ("Preparing", JobState.PENDING),
        ("Running", JobState.RUNNING),
        ("Finalizing", JobState.RUNNING),
        ("Completed", JobState.SUCCEEDED),
    ]:
        azure.fake.set_job_status(record.native_id, status)
        assert provider.job_status(record.id).state is state
    events = [e["state"] for e in provider.store.job_events(record.id)]
    assert events[-2:] == ["RUNNING", "SUCCEEDED"]  # one event per change, none per refresh


def _writes(azure: Installed) -> list[tuple[str, str]]:
    """Every write the fake workspace received (control plane and blob uploads)."""
    return [(r.method, r.url) for r in azure.transport.requests if r.method != "GET"]


def test_failed_attempt_is_resubmitted_up_to_max_restarts(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, max_restarts=1)))
    azure.fake.set_job_status(record.native_id, "Failed", "User process exited with status code 1")
    again = provider.advance_job(record.id)
    assert again.state is JobState.RESTARTING and again.attempts == 2
    assert again.native_id == f"{record.id}-a2"
    assert again.details["resubmit_due"] is False
    second = _put_body(azure, again.native_id)["properties"]
    assert second["codeId"] == record.details["code_id"]  # same code asset, no re-upload
    assert second["tags"] == {"mlcloud-job-id": record.id, "mlcloud-attempt": "2"}
    assert second["outputs"] == _put_body(azure, record.id)["properties"]["outputs"]
    assert len(azure.transport.find("POST", "startPendingUpload")) == 1

    azure.fake.set_job_status(again.native_id, "Failed", "User process exited with status code 7")
    final = provider.job_status(record.id)  # no restart left: the refresh alone ends it
    assert final.state is JobState.FAILED and final.exit_code == 7 and final.attempts == 2
    attempts = final.details["attempts"]
    assert [(a["native_id"], a["exit_code"]) for a in attempts] == [
        (record.id, 1),
        (f"{record.id}-a2", 7),
    ]
    events = " ".join(str(e.get("message")) for e in provider.store.job_events(record.id))
    assert "re-submitted as attempt 2 of 2" in events
    assert provider.advance_job(record.id).attempts == 2  # finished: nothing more to do
    assert len(azure.fake.jobs()) == 2


def test_status_of_a_failed_attempt_creates_nothing(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    """A read has no side effects: the refresh only records that a re-submission is due."""
    record = provider.submit_job(provider.plan_job(_job(tmp_path, max_restarts=2)))
    azure.fake.set_job_status(record.native_id, "Failed", "User process exited with status code 1")
    writes, received = _writes(azure), len(azure.fake.received)
    due = provider.job_status(record.id)
    again = provider.job_status(record.id)  # and again: still due, still nothing created
    assert _writes(azure) == writes and len(azure.fake.received) == received
    assert [j["name"] for j in azure.fake.jobs()] == [record.id]
    for seen in (due, again):
        assert seen.state is JobState.RESTARTING and seen.details["resubmit_due"] is True
        assert seen.attempts == 1 and seen.native_id == record.id
    assert due.message == "User process exited with status code 1"
    events = [str(e.get("message")) for e in provider.store.job_events(record.id)]
    assert sum("attempt 2 of 3 is due" in e for e in events) == 1  # one event, not one per read

    advanced = provider.advance_job(record.id)  # the explicit transition submits it
    assert advanced.attempts == 2 and advanced.native_id == f"{record.id}-a2"
    assert advanced.details["resubmit_due"] is False
    assert provider.advance_job(record.id).attempts == 2  # nothing due any more: a no-op
    assert sorted(j["name"] for j in azure.fake.jobs()) == [record.id, f"{record.id}-a2"]


def test_advance_adopts_an_attempt_already_submitted(
    provider: Any, azure: Installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUT went through but recording it did not: advancing again adopts that attempt
    (Azure refuses a second job of the same name) instead of failing or submitting twice."""
    record = provider.submit_job(provider.plan_job(_job(tmp_path, max_restarts=1)))
    azure.fake.set_job_status(record.native_id, "Failed", "User process exited with status code 1")
    provider.job_status(record.id)
    update = provider.store.update_job

    def lost(job_id: str, **fields: Any) -> Any:
        if "attempts" in fields:
            raise OSError("the store went away")
        return update(job_id, **fields)

    monkeypatch.setattr(provider.store, "update_job", lost)
    with pytest.raises(OSError):
        provider.advance_job(record.id)
    monkeypatch.setattr(provider.store, "update_job", update)
    adopted = provider.advance_job(record.id)
    assert adopted.attempts == 2 and adopted.native_id == f"{record.id}-a2"
    assert len(azure.transport.find("PUT", f"/jobs/{record.id}-a2?")) == 2  # the second: 409
    assert sorted(j["name"] for j in azure.fake.jobs()) == [record.id, f"{record.id}-a2"]


def test_cancel_while_a_resubmission_is_due_keeps_it_failed(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path, max_restarts=1)))
    azure.fake.set_job_status(record.native_id, "Failed", "User process exited with status code 4")
    assert provider.job_status(record.id).details["resubmit_due"] is True
    final = provider.cancel_job(record.id)
    assert final.state is JobState.FAILED and final.exit_code == 4
    assert final.details["resubmit_due"] is False
    assert provider.advance_job(record.id).attempts == 1  # finished: never re-submitted
    assert [j["name"] for j in azure.fake.jobs()] == [record.id]


def test_follow_stops_when_a_resubmission_is_due(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    """Following logs is a read: it ends with the failed attempt instead of re-submitting
    (or waiting forever for someone to); after advance_job the next attempt is shown."""
    record = provider.submit_job(provider.plan_job(_job(tmp_path, max_restarts=1)))
    azure.fake.set_job_logs(record.native_id, "epoch 1\nboom")
    azure.fake.set_job_status(record.native_id, "Failed", "User process exited with status code 1")
    assert list(provider.job_logs(record.id, follow=True)) == [
        f"[mlcloud] attempt 1 ({record.id})",  # a job that may restart heads its attempts
        "epoch 1",
        "boom",
    ]
    assert [j["name"] for j in azure.fake.jobs()] == [record.id]
    second = provider.advance_job(record.id)
    azure.fake.set_job_logs(second.native_id, "epoch 1 again\n")
    azure.fake.set_job_status(second.native_id, "Completed")
    assert list(provider.job_logs(record.id, follow=True)) == [
        f"[mlcloud] attempt 1 ({record.id})",
        "epoch 1",
        "boom",
        f"[mlcloud] attempt 2 ({second.native_id})",
        "epoch 1 again",
    ]


def test_sdk_follow_goes_on_across_a_restart(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    """``mlcloud logs -f`` (api.Job.logs): the provider's stream ends with the failed attempt;
    the SDK advances the job (the re-submission happens there) and follows the next attempt,
    each line once."""
    record = provider.submit_job(provider.plan_job(_job(tmp_path, max_restarts=1)))
    azure.fake.set_job_logs(record.native_id, "epoch 1\nboom")
    azure.fake.set_job_status(record.native_id, "Failed", "User process exited with status code 1")
    follow = api.Job(provider, record).logs(follow=True, poll=0.01)
    assert list(itertools.islice(follow, 4)) == [
        f"[mlcloud] attempt 1 ({record.id})",
        "epoch 1",
        "boom",
        f"[mlcloud] attempt 2 ({record.id}-a2)",
    ]
    assert len(azure.fake.jobs()) == 2  # advanced by the SDK's follow, not by a read
    azure.fake.set_job_logs(f"{record.id}-a2", "epoch 1 again\n")
    azure.fake.set_job_status(f"{record.id}-a2", "Completed")
    assert list(follow) == ["epoch 1 again"]
    assert provider.job_status(record.id).state is JobState.SUCCEEDED


def test_logs_and_follow(provider: Any, azure: Installed, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    assert list(provider.job_logs(record.id)) == []  # no log files yet
    azure.fake.set_job_status(record.native_id, "Running")
    azure.fake.set_job_logs(record.native_id, "epoch 1\nepoch 2\n")
    follow = provider.job_logs(record.id, follow=True)
    assert list(itertools.islice(follow, 2)) == ["epoch 1", "epoch 2"]
    azure.fake.set_job_logs(record.native_id, "epoch 1\nepoch 2\ndone")
    azure.fake.set_job_status(record.native_id, "Completed")
    assert list(follow) == ["done"]  # then it stops: the job finished
    assert list(provider.job_logs(record.id)) == ["epoch 1", "epoch 2", "done"]


def test_cancel_is_idempotent_on_azure(provider: Any, azure: Installed, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert azure.fake.job(record.native_id)["properties"]["status"] == "Canceled"
    calls = len(azure.transport.requests)
    assert provider.cancel_job(record.id).state is JobState.CANCELLED
    assert len(azure.transport.requests) == calls  # nothing sent for a finished job
    assert len(azure.transport.find("POST", "/cancel")) == 1


def test_list_jobs(provider: Any, tmp_path: Path) -> None:
    ids = {provider.submit_job(provider.plan_job(_job(tmp_path))).id for _ in range(2)}
    assert ids <= {j.id for j in provider.list_jobs()}


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (403, "AuthorizationFailed", PermissionDenied),
        (409, "Conflict", Conflict),
        (400, "QuotaExceeded", QuotaExceeded),
    ],
)
def test_error_bodies_are_mapped(
    provider: Any, azure: Installed, tmp_path: Path, status: int, code: str, error: type
) -> None:
    azure.fake.fail_next("PUT", r"/jobs/", status, code, f"{code}: nope sig=SECRET")
    with pytest.raises(error) as err:
        provider.submit_job(provider.plan_job(_job(tmp_path)))
    assert (err.value.provider_type, err.value.profile) == ("azureml", "azure")
    assert err.value.code == code
    assert "SECRET" not in str(err.value)
    assert provider.store.list_jobs() == []


def test_transient_errors_are_retried_once_by_azure_core(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    azure.fake.fail_next("GET", rf"/jobs/{record.native_id}$", 503, "ServiceUnavailable", "busy")
    assert provider.job_status(record.id).state is JobState.PENDING
    gets = azure.transport.find("GET", f"/jobs/{record.native_id}?")
    assert len(gets) == 2  # the 503, then azure-core's own retry; nothing stacked on top


def test_native_job_gone_is_not_found(provider: Any, azure: Installed, tmp_path: Path) -> None:
    record = provider.submit_job(provider.plan_job(_job(tmp_path)))
    del azure.fake.resources[azure.fake._key(f"/jobs/{record.native_id}")]
    with pytest.raises(NotFound):
        provider.job_status(record.id)


def test_custom_image_registers_an_anonymous_environment(
    provider: Any, azure: Installed, tmp_path: Path
) -> None:
    job = _job(tmp_path, framework=None, image="myacr.azurecr.io/train:2", inputs={})
    plan = provider.plan_job(job)
    planned_env = plan.steps[0].request["properties"]["environmentId"]
    provider.submit_job(plan)
    (env_put,) = azure.transport.find("PUT", "/environments/CliV2AnonymousEnvironment/versions/")
    assert env_put.json()["properties"]["image"] == "myacr.azurecr.io/train:2"
    assert env_put.url.split("?")[0].endswith(planned_env)  # the plan named the same version
    assert _put_body(azure, plan.id)["properties"]["environmentId"] == planned_env
