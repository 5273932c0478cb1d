"""Issue 10, item 14, on Vertex AI: re-deploying an endpoint from a ``gs://`` model directory
compares input signatures; the manifest is read from Cloud Storage (the fake's GCS JSON API) at
deploy time, with the provider's own storage client."""

from __future__ import annotations

import urllib.parse
import warnings
from pathlib import Path

import pytest
import yaml

from mlcloud import modeldir
from mlcloud.cli import main
from tests.fakes.vertex import FakeVertex
from tests.fakes.vertex.server import Blob
from tests.providers.vertex.conftest import BUCKET, settings_for


@pytest.fixture
def config(fake: FakeVertex, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mlcloud.yaml"
    profile = {"type": "vertex", **settings_for(fake.url)}
    path.write_text(yaml.safe_dump({"default": "local", "profiles": {"gcp": profile}}))
    monkeypatch.setenv("MLCLOUD_CONFIG", str(path))
    monkeypatch.delenv("MLCLOUD_PROVIDER", raising=False)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() rebinds it
    return path


def put_model(fake: FakeVertex, tmp: Path, prefix: str, width: int) -> str:
    """A model directory in the fake's bucket whose manifest takes rows of ``width`` numbers."""
    root = tmp / prefix.replace("/", "_")
    root.mkdir(parents=True, exist_ok=True)
    (root / "predictor.py").write_text(
        "class P:\n    def predict(self, rows):\n        return [1] * len(rows)\n"
    )
    signature = {"inputs": {"shape": [-1, width], "dtype": "float32"}}
    modeldir.write_manifest(root, "custom", {"predictor": "predictor:P"}, signature=signature)
    for path in root.rglob("*"):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(root).as_posix()}"
            fake.storage.blobs[(BUCKET, key)] = Blob(path.read_bytes(), 1, "text/plain")
    return f"gs://{BUCKET}/{prefix}"


def deploy(capsys: pytest.CaptureFixture[str], uri: str, *more: str) -> tuple[int, str]:
    """``mlcloud deploy`` in-process (the real CLI: exit code, error/hint/warning lines)."""
    capsys.readouterr()
    try:
        main(["deploy", uri, "-n", "sig", "--provider", "gcp", "--trust-code", *more])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def manifest_reads(fake: FakeVertex, prefix: str) -> int:
    """GETs of ``prefix``'s mlcloud-model.yaml the fake's GCS API received."""
    name = f"{prefix}/{modeldir.MANIFEST}"
    quoted = urllib.parse.quote(name, safe="")
    return sum(
        1
        for method, path in fake.server.log
        if method == "GET" and path.startswith("/download/") and (name in path or quoted in path)
    )


def test_gs_redeploy_checks_the_signature_in_the_bucket(
    config: Path, fake: FakeVertex, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    four = put_model(fake, tmp_path, "models/a", 4)
    three = put_model(fake, tmp_path, "models/b", 3)
    assert deploy(capsys, four)[0] == 0
    uploads = len(fake.vertex.calls("ModelService.UploadModel"))

    code, err = deploy(capsys, three)
    assert code == 2, err
    assert "callers would break" in err and "[-1, 4]" in err and "[-1, 3]" in err
    assert "hint:" in err and "--force" in err
    assert manifest_reads(fake, "models/a") == 1 and manifest_reads(fake, "models/b") == 1
    assert len(fake.vertex.calls("ModelService.UploadModel")) == uploads  # nothing sent

    # The bucket's copy changes to a model with the same inputs: read again, so allowed.
    put_model(fake, tmp_path / "again", "models/b", 4)
    code, err = deploy(capsys, three)
    assert code == 0 and "warning" not in err, err
    assert manifest_reads(fake, "models/b") == 2
    (*_, upload) = fake.vertex.calls("ModelService.UploadModel")
    assert upload["model"]["artifactUri"] == three

    # a folder with no manifest: deployed, with a warning that nothing was checked
    code, err = deploy(capsys, f"gs://{BUCKET}/models/empty")
    assert code == 0, err
    assert "warning: endpoint 'sig': the input signature was not checked" in err
