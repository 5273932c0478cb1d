"""The CLI as users run it: a real subprocess, exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import MLCLOUD, REPO

# Not plain "google.cloud": google-cloud-aiplatform installs an nspkg .pth file that creates the
# empty google.cloud namespace at interpreter start-up, before any mlcloud code runs.
HEAVY = ("boto3", "botocore", "google.cloud.aiplatform", "google.cloud.aiplatform_v1",
         "google.cloud.storage", "google.api_core", "azure", "bentoml", "torch", "fastapi",
         "sklearn", "pydantic", "yaml")  # fmt: skip


def run(*args: str, cwd: Path | None = None, stdin: str | None = None):
    return subprocess.run(
        [*MLCLOUD, *args], cwd=cwd, capture_output=True, text=True, input=stdin, timeout=120
    )


def test_cli_import_loads_no_heavy_module() -> None:
    code = (
        "import sys, mlcloud.cli; "
        f"print([m for m in {HEAVY!r} "
        "if any(k == m or k.startswith(m + '.') for k in sys.modules)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("train", "jobs", "logs", "cancel", "deploy", "endpoints", "predict", "undeploy",
                "providers", "init", "schema", "image"):  # fmt: skip
        assert cmd in out.stdout


def test_bad_spec_is_one_error_line_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text("name: Bad Name\ncommand: python\nnodes: -1\n")
    out = run("train", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: invalid job file")
    assert "name:" in out.stderr and "nodes:" in out.stderr and "Traceback" not in out.stderr


def test_missing_job_file(tmp_path: Path) -> None:
    out = run("train", cwd=tmp_path)
    assert out.returncode == 2 and "job file not found" in out.stderr and "hint:" in out.stderr


def test_unknown_provider_has_hint(tmp_path: Path) -> None:
    out = run("train", str(REPO / "examples/iris/job.yaml"), "--provider", "nimbus", "--dry-run")
    assert out.returncode == 2
    assert "unknown provider or profile 'nimbus'" in out.stderr
    assert "hint:" in out.stderr and "sagemaker" in out.stderr


def test_unknown_job_exit_2() -> None:
    # an unknown id is the user's input being wrong: 2 (issue 10, item 13; was 1)
    for args in (("logs", "nope-000000"), ("cancel", "nope-000000"), ("jobs", "show", "x")):
        out = run(*args)
        assert out.returncode == 2 and out.stderr.startswith("error: no job"), out.stderr


def test_dry_run_json_is_the_plan(tmp_path: Path) -> None:
    out = run("train", str(REPO / "examples/iris/job.yaml"), "--dry-run", "--output", "json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["provider"] == "local" and plan["type"] == "local"
    (step,) = plan["steps"]
    assert step["call"] == "local.Popen" and step["request"]["argv"] == ["python", "train.py"]
    assert run("jobs", "list", "--output", "json").stdout.strip() == "[]"  # nothing submitted


def test_dry_run_text_and_set(tmp_path: Path) -> None:
    out = run("train", str(REPO / "examples/iris/job.yaml"), "--dry-run",
              "--set", "hyperparameters.C=0.5")  # fmt: skip
    assert out.returncode == 0 and "local.Popen" in out.stdout and '\\"C\\": 0.5' in out.stdout


def test_schema_and_init_and_providers(tmp_path: Path) -> None:
    schema = json.loads(run("schema", "job").stdout)
    assert schema["title"] == "TrainingJob"
    assert run("init", cwd=tmp_path).returncode == 0
    again = run("init", cwd=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr
    data = json.loads(run("providers", "--output", "json", cwd=tmp_path).stdout)
    assert {p["type"] for p in data["providers"]} >= {"local", "sagemaker", "vertex", "azureml"}
    assert data["default"] == "local" and data["profiles"][0]["name"] == "local"


def test_predict_bad_json_is_clear() -> None:
    out = run("predict", "iris", "--data", "{not json")
    assert out.returncode == 2 and "not valid JSON" in out.stderr


def test_undeploy_unknown_is_idempotent() -> None:
    out = run("undeploy", "ghost")
    assert out.returncode == 0 and "nothing to do" in out.stdout


def test_debug_shows_traceback(tmp_path: Path) -> None:
    out = run("--debug", "logs", "nope-000000")
    assert out.returncode != 0 and "Traceback" in out.stderr


def _custom_model(root: Path) -> Path:
    from mlcloud import modeldir

    src = root / "src"
    src.mkdir(parents=True)
    (src / "pred.py").write_text("class P:\n    def predict(self, rows):\n        return rows\n")
    return modeldir.save(src, "custom", root / "model", predictor="pred:P")


def test_image_build_reports_a_tampered_model_as_the_model_error(tmp_path: Path) -> None:
    # It once said "Invalid value for --tag: model file pred.py does not match ..." (an
    # `except ValueError` meant for the tag caught the model error).
    model = _custom_model(tmp_path)
    (model / "pred.py").write_text("tampered = True\n")
    out = run("image", "build", str(model), "--tag", "mlcloud-iris")
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: model file pred.py does not match mlcloud-model.yaml")
    assert "--tag" not in out.stderr and "Invalid value" not in out.stderr
    assert "Traceback" not in out.stderr


def test_image_build_bad_tag_is_bad_input(tmp_path: Path) -> None:
    model = _custom_model(tmp_path)
    out = run("image", "build", str(model), "--tag", "Bad Tag!")
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: image tag 'Bad Tag!' must be name[:version]")
    assert "hint: e.g. --tag mlcloud-iris" in out.stderr


# ---- issue 16, item 15: every refusal is an error: line and a hint:, never a traceback -------
def _model(root: Path) -> Path:
    from sklearn.linear_model import LogisticRegression

    from mlcloud import modeldir

    return modeldir.save(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), "sklearn", root)


def _clear_error(out: subprocess.CompletedProcess[str], code: int, *expected: str) -> None:
    assert out.returncode == code, out.stderr
    assert out.stderr.startswith("error: "), out.stderr
    for text in expected:
        assert text in out.stderr, out.stderr
    for noise in ("Traceback", "unexpected", "validation error", "Input should be", "pydantic"):
        assert noise not in out.stderr, out.stderr


def test_bad_replica_range_is_one_clear_line(tmp_path: Path) -> None:
    model = _model(tmp_path / "m")
    out = run("deploy", str(model), "--name", "x", "--min-replicas", "3", "--max-replicas", "2",
              "--dry-run")  # fmt: skip
    _clear_error(out, 2, "replicas: max (2) must be >= min (3)")


def test_serving_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    """Each of these once reached the server and came back as its start-up traceback."""
    import socket

    model = str(_model(tmp_path / "m"))
    cases = [
        (["--host", "not-a-host"], "host: must be an IP address to bind"),
        (["--env", "MLCLOUD_SERVE_WORKERS=0"], "MLCLOUD_SERVE_WORKERS='0' must be a whole number"),
        (["--env", "MLCLOUD_SERVING_CONTRACT=bogus"], "must be one of local, sagemaker"),
        (["--env", "MLCLOUD_SERVE_MODEL=/x"], "set by mlcloud itself"),
    ]
    for args, expected in cases:
        out = run("deploy", model, "--name", "x", *args, "--dry-run")
        _clear_error(out, 2, expected)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("deploy", model, "--name", "x", "--port", str(port), "--dry-run")
    _clear_error(out, 1, f"cannot serve on 127.0.0.1:{port}", "hint: choose another --port")


def test_unbounded_inputs_are_refused_by_size(tmp_path: Path) -> None:
    import time

    start = time.monotonic()
    out = run("predict", "iris", "--data", "@/dev/zero")
    _clear_error(out, 2, "--data @/dev/zero: larger than 64 MiB")
    out = run("train", "/dev/zero")
    _clear_error(out, 2, "larger than")
    assert time.monotonic() - start < 60
    (tmp_path / "not-utf8.json").write_bytes(b"\xff\xfe")
    _clear_error(run("predict", "iris", "--data", f"@{tmp_path}/not-utf8.json"), 2, "not UTF-8")


def test_odd_environment_and_arguments_are_clear(tmp_path: Path) -> None:
    import os

    out = run("jobs", "list", "-n", "999999999999999999999")
    assert out.returncode == 2 and "is not in the range" in out.stderr, out.stderr
    _clear_error(run("init", "--path", str(tmp_path / "no" / "dir.yaml")), 2, "cannot write")
    home_file = tmp_path / "home-is-a-file"
    home_file.write_text("")
    env = {**os.environ, "MLCLOUD_HOME": str(home_file)}
    out = subprocess.run([*MLCLOUD, "jobs", "list"], capture_output=True, text=True, env=env)
    _clear_error(out, 2, f"cannot use {home_file} as mlcloud's home", "hint: set MLCLOUD_HOME")
    env = {**os.environ, "MLCLOUD_CONFIG": str(tmp_path)}
    out = subprocess.run([*MLCLOUD, "providers"], capture_output=True, text=True, env=env)
    _clear_error(out, 2, "which is a directory", "hint:")


def test_secret_values_are_never_printed(tmp_path: Path) -> None:
    model = str(_model(tmp_path / "m"))
    out = run("deploy", model, "--name", "x", "--env", "API_KEY=abc-secret-123", "--dry-run",
              "-o", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "abc-secret-123" not in out.stdout and '"API_KEY": "<redacted>"' in out.stdout
    bad = run("train", str(REPO / "examples/iris/job.yaml"), "--dry-run",
              "--set", "env.DB_PASSWORD=[hunter2]")  # fmt: skip
    _clear_error(bad, 2, "env.DB_PASSWORD: must be a value, {from_env: NAME} or {secret: URI}")
    assert "hunter2" not in bad.stderr


# ---- issue 10, items 10-12: dry-run placeholders, one JSON document, messages ----------------
def test_dry_run_without_settings_shows_placeholders_and_one_warning(tmp_path: Path) -> None:
    cases = (
        ("sagemaker", ("region", "role_arn", "bucket")),
        ("vertex", ("project", "staging_bucket")),
        ("azureml", ("subscription_id", "resource_group", "workspace")),
    )
    for provider, missing in cases:
        out = run("train", str(REPO / "examples/ddp/job.yaml"), "-p", provider, "--dry-run",
                  cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
        warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and out.stderr.count("\n") == 1, out.stderr
        for name in missing:
            assert name in warnings[0], (provider, name)
            # Azure ML's request names its workspace only in the URL, not in the body shown
            assert provider == "azureml" or f"<{name}>" in out.stdout, (provider, name)
        real = run("train", str(REPO / "examples/ddp/job.yaml"), "-p", provider, cwd=tmp_path)
        assert real.returncode == 2 and "error:" in real.stderr  # a real submit still refuses


def test_listings_and_predict_take_output_option(tmp_path: Path) -> None:
    for args in (("jobs", "-o", "json"), ("endpoints", "--output", "json"),
                 ("jobs", "list", "-o", "json"), ("endpoints", "list", "-o", "json")):  # fmt: skip
        out = run(*args, cwd=tmp_path)
        assert out.returncode == 0 and json.loads(out.stdout) == [], (args, out.stderr)
    out = run("predict", "nope", "-o", "json", "--data", "[1]", cwd=tmp_path)
    assert "No such option" not in out.stderr and out.returncode == 2


def test_train_follow_json_is_one_document_logs_on_stderr(tmp_path: Path) -> None:
    out = run("train", str(REPO / "examples/iris/job.yaml"), "--follow", "-o", "json",
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)  # nothing but the record on stdout
    assert record["state"] == "SUCCEEDED"
    assert len(out.stderr.splitlines()) > 2  # the job's log went to stderr


def test_messages_do_not_contradict_or_repeat(tmp_path: Path) -> None:
    gpu = run("train", str(REPO / "examples/iris/job.yaml"), "--set",
              "resources.accelerators=T4:64", "--dry-run", cwd=tmp_path)  # fmt: skip
    assert "needs 64 GPU(s), this machine has" in gpu.stderr and gpu.returncode == 2
    assert "hint:" in gpu.stderr and "GPU(s)" not in gpu.stderr.split("hint:")[1]
    model = run("deploy", str(tmp_path), "--name", "x", cwd=tmp_path)
    assert model.stderr.count("is not an mlcloud model directory") == 1, model.stderr
    assert "hint:" in model.stderr
    flag = run("train", str(REPO / "examples/ddp/job.yaml"), "--set", "nodse=2", "--dry-run")
    assert "invalid --set" in flag.stderr and "--set nodse: unknown field" in flag.stderr
    assert "did you mean nodes?" in flag.stderr and "hint:" in flag.stderr
    data = run("predict", "x", "--data", "@missing.json", cwd=tmp_path)
    assert "hint:" in data.stderr and data.returncode == 2


def test_image_build_keeps_bentoml_home_under_mlcloud_home(tmp_path: Path) -> None:
    # It wrote ~/bentoml although MLCLOUD_HOME was set (issue 10, item 15).
    import os

    model = _custom_model(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"}
    env.update(MLCLOUD_HOME=str(tmp_path / "mlhome"), HOME=str(tmp_path / "user"))
    out = subprocess.run([*MLCLOUD, "image", "build", str(model), "--tag", "tiny"], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mlhome" / "bentoml" / "bentos" / "tiny").is_dir()
    assert not (tmp_path / "user" / "bentoml").exists()


NOISY = """\
import signal, sys, time

def on_term(signum, frame):
    for i in range(100):  # like torchrun's SignalException tracebacks
        print(f"Traceback line {i} of the shutdown", flush=True)
    sys.exit(1)

signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
time.sleep(120)
"""


def test_cancelled_job_log_ends_cleanly(tmp_path: Path) -> None:
    (tmp_path / "noisy.py").write_text(NOISY)
    (tmp_path / "job.yaml").write_text("name: noisy\ncommand: [python, noisy.py]\n")
    job_id = run("train", "job.yaml", cwd=tmp_path).stdout.strip()
    deadline = time.monotonic() + 60
    while "ready" not in run("logs", job_id).stdout and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run("cancel", job_id).returncode == 0
    log = run("logs", job_id).stdout.splitlines()
    assert "job cancelled" in log[-1] and "shutdown.log" in log[-1], log[-5:]
    assert not any("Traceback" in line for line in log), log[-5:]
    aside = Path(log[-1].rsplit(" are in ", 1)[1].rstrip(")"))
    assert aside.read_text().count("Traceback line") == 100
    shown = run("jobs", "show", job_id).stdout
    assert "exit code: None" not in shown and "exit code: - (cancelled)" in shown


def test_distributed_attempt_line_names_torchrun_restarts() -> None:
    from providers.local.supervisor import Supervisor

    step = {"argv": ["python", "-m", "torch.distributed.run", "--max-restarts=3", "t.py"]}
    sup = Supervisor({"job_id": "j", "steps": [step], "max_runtime": 60})  # type: ignore[typeddict-item]
    assert sup._attempt_line(1, 1) == "job started (torchrun restarts its workers up to 3 time(s))"
    plain = {"argv": ["python", "t.py"]}
    sup = Supervisor({"job_id": "j", "steps": [plain], "max_runtime": 60})  # type: ignore[typeddict-item]
    assert sup._attempt_line(2, 4) == "attempt 2/4 started"


def test_azure_sdk_logging_is_captured_not_printed() -> None:
    # azure-identity logged ~15 lines (one per credential tried) before mlcloud's error
    code = (
        "import logging\n"
        "from providers.azureml import clients\n"
        "clients.quiet_sdk(); clients.quiet_sdk()\n"
        "log = logging.getLogger('azure.identity._credentials.chained')\n"
        "for i in range(15): log.warning('DefaultAzureCredential failed %d', i)\n"
        "assert len(clients.SDK_LOG) == 15, list(clients.SDK_LOG)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_endpoint_failures_have_a_hint_naming_the_server_log(tmp_path: Path) -> None:
    from mlcloud import modeldir

    src = tmp_path / "src"
    src.mkdir()
    (src / "pred.py").write_text(
        "class P:\n    def predict(self, rows):\n        raise RuntimeError('boom')\n"
    )
    model = modeldir.save(src, "custom", tmp_path / "model", predictor="pred:P")
    deployed = run("deploy", str(model), "--name", "boom", "--trust-code")
    assert deployed.returncode == 0, deployed.stderr
    try:
        out = run("predict", "boom", "--data", '{"instances": [[1, 2]]}')
        assert out.returncode == 1 and "answered 5" in out.stderr, out.stderr
        hint = out.stderr.split("hint: ", 1)[1]
        assert "the server's log: " in hint and ".log" in hint, out.stderr
        log = Path(hint.removeprefix("the server's log: ").split(",")[0].strip())
        assert log.is_file()
    finally:
        run("undeploy", "boom")


def test_redeploy_says_updated_and_refuses_an_input_change_without_force(tmp_path: Path) -> None:
    from mlcloud import modeldir

    def model(folder: str, shape: list[int]) -> Path:
        src = tmp_path / folder
        src.mkdir()
        (src / "pred.py").write_text(
            "class P:\n    def predict(self, rows):\n        return rows\n"
        )
        signature = {"inputs": {"shape": shape, "dtype": "float64"}}
        return modeldir.save(src, "custom", tmp_path / f"{folder}-model", predictor="pred:P",
                             signature=signature)  # fmt: skip

    four, other = model("a", [-1, 4]), model("b", [-1, 3, 224, 224])
    assert run("deploy", str(four), "--name", "sig", "--trust-code").returncode == 0
    try:
        again = run("deploy", str(four), "--name", "sig", "--trust-code")
        assert again.returncode == 0 and "updated (version 1 → 2)" in again.stdout, again.stdout
        refused = run("deploy", str(other), "--name", "sig", "--trust-code")
        assert refused.returncode == 2 and "callers would break" in refused.stderr
        assert "hint:" in refused.stderr and "--force" in refused.stderr
        forced = run("deploy", str(other), "--name", "sig", "--trust-code", "--force")
        assert forced.returncode == 0 and "updated (version 2 → 3)" in forced.stdout, forced.stderr
    finally:
        run("undeploy", "sig")


def test_ctrl_c_on_logs_follow_says_the_job_still_runs(tmp_path: Path) -> None:
    import signal

    (tmp_path / "noisy.py").write_text(NOISY)
    (tmp_path / "job.yaml").write_text("name: noisy\ncommand: [python, noisy.py]\n")
    job_id = run("train", "job.yaml", cwd=tmp_path).stdout.strip()
    try:
        follow = subprocess.Popen([*MLCLOUD, "logs", job_id, "-f"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert follow.stdout is not None
        import threading

        guard = threading.Timer(90, follow.kill)  # a blocked readline cannot hang the test
        guard.start()
        deadline = time.monotonic() + 60
        while "ready" not in follow.stdout.readline() and time.monotonic() < deadline:
            pass
        guard.cancel()
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=30)
        assert follow.returncode == 130
        assert f"job {job_id} is still running" in err and "aborted" not in err, err
        assert "RUNNING" in run("jobs", "show", job_id).stdout
    finally:
        run("cancel", job_id)
