"""Redaction of secret-looking values, secret references, and what model servers inherit."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from mlcloud import sensitive
from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.sensitive import REDACTED
from mlcloud.specs import FromEnv, SecretRef, TrainingJob


@pytest.mark.parametrize(
    "name",
    ["DB_PASSWORD", "API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
     "AZURE_STORAGE_CONNECTION_STRING", "GITHUB_TOKEN", "MY_PRIVATE_KEY", "BASIC_AUTH",
     "db-passwd", "SENTRY_DSN"],
)  # fmt: skip
def test_secret_looking_names(name: str) -> None:
    assert sensitive.looks_secret(name)


@pytest.mark.parametrize(
    "name", ["TOKENIZERS_PARALLELISM", "PWD", "PATH", "KEYBOARD", "MONKEY", "SORT_ORDER", "HOME"]
)
def test_ordinary_names(name: str) -> None:
    assert not sensitive.looks_secret(name)


def test_redact_every_shape_of_environment_and_nothing_else() -> None:
    plan = {
        "steps": [
            {"call": "local.Popen", "request": {"env": {"DB_PASSWORD": "p", "A": "1"}}},
            {"call": "sagemaker.CreateTrainingJob", "request": {
                "Environment": {"API_KEY": "k", "B": "2"},
                "OutputDataConfig": {"KmsKeyId": "kms"},
            }},
            {"call": "JobService.CreateCustomJob", "request": {"containerSpec": {
                "env": [{"name": "HF_TOKEN", "value": "t"}, {"name": "C", "value": "3"}],
            }}},
            {"call": "jobs.CreateOrUpdate", "request": {"environment_variables": {
                "DATABASE_URL": "postgres://app:s3cret@db:5432/x",
            }}},
            {"call": "JobSubmissionClient.submit_job", "request": {"runtime_env": {
                "env_vars": {"WANDB_API_KEY": "w", "D": "4"},
            }}},
            {"call": "s3.PutObject", "request": {"Key": "models/KEY", "Bucket": "b"}},
        ]
    }  # fmt: skip
    out = json.dumps(sensitive.redact(plan))
    for value in ('"p"', '"k"', '"t"', '"w"', "s3cret"):
        assert value not in out
    assert out.count(REDACTED) == 5
    assert "postgres://app:<redacted>@db:5432/x" in out
    for kept in (
        '"A": "1"',
        '"B": "2"',
        '"value": "3"',
        '"D": "4"',
        '"KmsKeyId": "kms"',
        '"Key": "models/KEY"',
    ):
        assert kept in out
    refs = sensitive.redact({"env": {"DB_PASSWORD": {"from_env": "X"}}})
    assert refs == {"env": {"DB_PASSWORD": {"from_env": "X"}}}  # a reference is no secret


def test_specs_take_references_and_round_trip() -> None:
    job = TrainingJob.model_validate(
        {
            "name": "j",
            "command": ["python"],
            "env": {"A": 1, "B": {"from_env": "SHELL_B"}, "C": {"secret": "projects/p/secrets/c"}},
        }
    )
    secret = SecretRef(secret="projects/p/secrets/c")
    assert job.env == {"A": "1", "B": FromEnv(from_env="SHELL_B"), "C": secret}
    assert job.env_values == {"A": "1"}
    again = TrainingJob.model_validate(job.model_dump(mode="json"))
    assert again == job
    with pytest.raises(ValueError):
        TrainingJob.model_validate({"name": "j", "command": ["x"], "env": {"A": {"nope": 1}}})


def test_split_and_resolve_a_local_environment() -> None:
    env = {"A": "1", "DB_PASSWORD": {"from_env": "SHELL_PW"}, "API_KEY": "literal"}
    plain, env_from, hidden = sensitive.split_env(env)
    assert plain == {"A": "1"}
    assert env_from == {"DB_PASSWORD": "SHELL_PW", "API_KEY": sensitive.HIDDEN_PREFIX + "API_KEY"}
    assert hidden == {sensitive.HIDDEN_PREFIX + "API_KEY": "literal"}
    environ = {"SHELL_PW": "pw", "PATH": "/bin", **hidden}
    full = sensitive.process_env(environ, plain, env_from)
    assert full == {"SHELL_PW": "pw", "PATH": "/bin", "A": "1", "DB_PASSWORD": "pw",
                    "API_KEY": "literal"}  # fmt: skip
    with pytest.raises(sensitive.MissingSecret, match=r"API_KEY \(its value .*\), SHELL_PW are"):
        sensitive.process_env({}, plain, env_from)
    with pytest.raises(ValueError, match="cloud secret store"):
        sensitive.split_env({"X": {"secret": "arn:aws:..."}})


def test_cloud_env_keeps_references_and_refuses_from_env() -> None:
    def accept(uri: str) -> str | None:
        return uri if uri.startswith("arn:") else None

    options = {"where": "sagemaker", "store": "Secrets Manager", "example": "arn:x"}
    env = {"A": "1", "DB": {"secret": "arn:aws:secretsmanager:r:1:secret:db"}}
    assert sensitive.cloud_env(env, accept=accept, **options) == {
        "A": "1",
        sensitive.SECRET_REF_PREFIX + "DB": "arn:aws:secretsmanager:r:1:secret:db",
    }
    with pytest.raises(UnsupportedFeature, match="from_env"):
        sensitive.cloud_env({"DB": {"from_env": "X"}}, accept=accept, **options)
    with pytest.raises(SpecError, match="not a secret sagemaker can read"):
        sensitive.cloud_env({"DB": {"secret": "gs://nope"}}, accept=accept, **options)


def test_scrubbed_environ() -> None:
    environ = {
        "PATH": "/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_PROFILE": "prod",
        "GOOGLE_APPLICATION_CREDENTIALS": "/k.json",
        "AZURE_CLIENT_SECRET": "s",
        "MLCLOUD_API_TOKEN": "t",
        "HF_TOKEN": "t",
        "MLCLOUD_HOME": "/h",
    }
    assert sensitive.scrubbed_environ(environ) == {
        "PATH": "/bin",
        "HOME": "/home/u",
        "LANG": "C.UTF-8",
        "MLCLOUD_HOME": "/h",
    }


def test_local_model_servers_do_not_inherit_the_cli_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process the local provider starts for a model server (a real one here, which
    writes its environment out) has none of the deployer's credentials, but what the plan sets."""
    from providers.local import endpoint_procs

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-the-cli")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-from-the-cli")
    monkeypatch.setenv("MLCLOUD_API_TOKEN", "token-from-the-cli")
    monkeypatch.setenv("DB_PASSWORD", "from-the-cli")
    dump = tmp_path / "env.json"
    code = f"import json, os; json.dump(dict(os.environ), open({str(dump)!r}, 'w'))"
    ident = endpoint_procs.spawn(
        [sys.executable, "-c", code],
        {"API_KEY": "set-by-the-plan"},
        str(tmp_path),
        tmp_path / "server.log",
    )
    deadline = time.monotonic() + 30
    while not dump.exists() or endpoint_procs.alive(ident):
        assert time.monotonic() < deadline, "the process did not finish"
        time.sleep(0.05)
    endpoint_procs.reap(ident)
    seen = json.loads(dump.read_text())
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLCLOUD_API_TOKEN", "DB_PASSWORD"):
        assert name not in seen, name
    assert seen["API_KEY"] == "set-by-the-plan" and seen["PATH"] == os.environ["PATH"]


def test_the_store_never_holds_a_secret_value(tmp_path: Path) -> None:
    """Whatever a provider hands the store (a deployment's ``--env API_KEY=…``, a job spec), no
    secret-looking value reaches ``state.db`` (or its WAL), and reading back shows it redacted."""
    from mlcloud.records import EndpointRecord, EndpointState, JobRecord, JobState
    from mlcloud.store import Store

    store = Store.open(tmp_path / "home")
    spec = {"env": {"API_KEY": "ep-secret-value", "MODE": "fast"}}
    store.put_endpoint(EndpointRecord("ep", "local", "local", EndpointState.READY, spec=spec))
    job = JobRecord("j-1", "j", "local", "local", JobState.PENDING, spec={
        "env": {"DB_PASSWORD": "job-secret-value", "DSN": "postgres://u:pw-in-url@h/db"}
    })  # fmt: skip
    store.add_job(job)
    assert store.get_endpoint("ep").spec["env"] == {"API_KEY": REDACTED, "MODE": "fast"}
    assert store.get_job("j-1").spec["env"]["DB_PASSWORD"] == REDACTED
    store.close()
    for path in (tmp_path / "home").rglob("*"):  # the store, its WAL, its backups
        if not path.is_file():
            continue
        data = path.read_bytes()
        for value in (b"ep-secret-value", b"job-secret-value", b"pw-in-url"):
            assert value not in data, f"{value!r} in {path.name}"
