"""Cloud secrets: the plan names a secret store entry, mlcloud's in-container launcher reads it.

None of the three training platforms puts a secret store entry into a training container's
environment itself, so the plan carries ``MLCLOUD_SECRETREF_<NAME>=<reference>`` and the launcher
reads each one with the job's own identity before the command starts. The far ends here are
real servers on 127.0.0.1: moto (AWS Secrets Manager, SSM), and small stand-ins for the GCE
metadata server + Secret Manager and for Azure's managed identity endpoint + Key Vault, answering
the documented REST shapes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from providers.common import launcher

REPO = Path(__file__).resolve().parents[2]
REF = launcher.SECRET_REF_PREFIX
GCP_SECRET = "projects/p/secrets/db-password/versions/3"
VAULT_SECRET = "https://team-vault.vault.azure.net/secrets/api-key"


class _Fake(BaseHTTPRequestHandler):
    """Metadata/identity token endpoints and the two secret stores."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            ok = self.headers.get("Metadata-Flavor") == "Google"
            self._answer(200 if ok else 403, {"access_token": "gcp-token", "expires_in": 3599})
        elif path == f"/v1/{GCP_SECRET}:access":
            ok = self.headers.get("Authorization") == "Bearer gcp-token"
            data = base64.b64encode(b"gcp-value").decode()
            self._answer(200 if ok else 401, {"name": GCP_SECRET, "payload": {"data": data}})
        elif path == "/msi/token":
            ok = self.headers.get("X-IDENTITY-HEADER") == "id-header" and "vault.azure.net" in (
                self.path
            )
            self._answer(200 if ok else 400, {"access_token": "azure-token"})
        elif path == "/secrets/api-key":
            ok = self.headers.get("Authorization") == "Bearer azure-token"
            self._answer(200 if ok else 401, {"value": "azure-value", "id": VAULT_SECRET})
        else:
            self._answer(404, {"error": "not found"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _gcp_env(fake: str) -> dict[str, str]:
    return {"GCE_METADATA_HOST": fake, "MLCLOUD_SECRETMANAGER_URL": f"http://{fake}"}


def _azure_env(fake: str) -> dict[str, str]:
    return {
        "IDENTITY_ENDPOINT": f"http://{fake}/msi/token",
        "IDENTITY_HEADER": "id-header",
        "MLCLOUD_KEYVAULT_URL": f"http://{fake}",
    }


def test_references_become_values_and_leave_the_environment() -> None:
    env = {"A": "1", REF + "DB": "arn:x", REF + "KEY": "projects/y"}
    out = launcher.resolve_secrets(env, fetch=lambda ref, env: f"value-of-{ref}")
    assert out == {"A": "1", "DB": "value-of-arn:x", "KEY": "value-of-projects/y"}
    assert launcher.resolve_secrets({"A": "1"}) == {"A": "1"}


def test_gcp_secret_manager(fake: str) -> None:
    env = {REF + "DB_PASSWORD": GCP_SECRET, **_gcp_env(fake)}
    assert launcher.resolve_secrets(env)["DB_PASSWORD"] == "gcp-value"


def test_azure_key_vault(fake: str) -> None:
    env = {REF + "API_KEY": VAULT_SECRET, **_azure_env(fake)}
    assert launcher.resolve_secrets(env)["API_KEY"] == "azure-value"


def test_aws_secrets_manager_and_ssm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key in [k for k in os.environ if k.startswith("AWS_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        sm = boto3.client("secretsmanager", region_name="eu-west-1")
        arn = sm.create_secret(Name="db-password", SecretString="aws-value")["ARN"]
        ssm = boto3.client("ssm", region_name="eu-west-1")
        ssm.put_parameter(Name="/team/api-key", Value="ssm-value", Type="SecureString")
        param = ssm.get_parameter(Name="/team/api-key")["Parameter"]["ARN"]
        env = {REF + "DB_PASSWORD": arn, REF + "API_KEY": param}
        assert launcher.resolve_secrets(env) == {"DB_PASSWORD": "aws-value", "API_KEY": "ssm-value"}
    finally:
        server.stop()


def _launch(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The launcher as a cloud container runs it; the command proves what it got by a hash."""
    out = tmp_path / "seen.txt"
    command = (
        "import hashlib, os, sys; "
        f"open({str(out)!r}, 'w').write(hashlib.sha256(os.environ['DB_PASSWORD'].encode())"
        ".hexdigest() + ' ' + ','.join(k for k in os.environ if k.startswith('MLCLOUD_SECRETREF')))"
    )
    argv = [sys.executable, str(REPO / "providers/common/launcher.py"), "--platform", "local"]
    return subprocess.run(
        [*argv, "--", sys.executable, "-c", command],
        env={**os.environ, **env, "MLCLOUD_FS_ROOT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_gets_the_secret_and_never_runs_without_it(fake: str, tmp_path: Path) -> None:
    done = _launch({REF + "DB_PASSWORD": GCP_SECRET, **_gcp_env(fake)}, tmp_path)
    assert done.returncode == 0, done.stderr
    digest, refs = (tmp_path / "seen.txt").read_text().split(" ")
    assert digest == hashlib.sha256(b"gcp-value").hexdigest() and refs == ""
    assert "gcp-value" not in done.stderr + done.stdout

    (tmp_path / "seen.txt").unlink()
    missing = GCP_SECRET.replace("db-password", "nope")
    failed = _launch({REF + "DB_PASSWORD": missing, **_gcp_env(fake)}, tmp_path)
    assert failed.returncode == 1
    assert f"[mlcloud] cannot read the secret for DB_PASSWORD ({missing})" in failed.stderr
    assert not (tmp_path / "seen.txt").exists(), "the command ran without its secret"
