"""Copies of other providers' artifacts (mlcloud/pipelines/artifacts.py) from a real Cloud
Storage JSON API (the GCS fake on 127.0.0.1, google-cloud-storage pointed at it): a prefix
copied once per content version; which provider reads what."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.pipelines import artifacts
from tests.fakes.gcs import running
from tests.pipelines.conftest import write


def test_a_gcs_prefix_is_copied_once_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "mlcloud-model.yaml").write_text("framework: sklearn\n")
    (model / "sub" / "weights.bin").write_bytes(b"w" * 100_000)
    home = tmp_path / "home"
    with running() as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        uri = fake.storage.put_tree("bucket", "runs/1/model", model)
        fake.storage.put_tree("bucket", "runs/1/model-2", model)  # same prefix start: not it
        copy = Path(artifacts.for_provider("local", uri, home))
        assert (copy / "sub" / "weights.bin").read_bytes() == b"w" * 100_000
        assert sorted(p.name for p in copy.iterdir()) == [".mlcloud-copied", "mlcloud-model.yaml",
                                                          "sub"]  # fmt: skip
        marker = (copy / ".mlcloud-copied").stat().st_mtime_ns
        assert artifacts.localize(uri, home) == copy  # unchanged: not copied again
        assert (copy / ".mlcloud-copied").stat().st_mtime_ns == marker
        (model / "sub" / "weights.bin").write_bytes(b"v" * 10)
        fake.storage.put_tree("bucket", "runs/1/model", model)  # a new version of each object
        fresh = artifacts.localize(uri, home)
        assert fresh != copy and (fresh / "sub" / "weights.bin").read_bytes() == b"v" * 10
        assert artifacts.for_provider("vertex", uri, home) == uri  # Vertex reads gs:// itself


def test_which_provider_reads_what(tmp_path: Path) -> None:
    assert artifacts.readable("sagemaker", "s3://b/k") and not artifacts.readable(
        "local", "s3://b/k"
    )
    assert artifacts.readable("local", "/tmp/x") and artifacts.readable("local", "file:///tmp/x")
    assert artifacts.for_provider("sagemaker", "/tmp/model", tmp_path) == "/tmp/model"  # staged
    with pytest.raises(UnsupportedFeature, match="copying https://"):  # an Azure blob URL
        artifacts.for_provider("local", "https://a.blob.core.windows.net/c/m", tmp_path)
    with pytest.raises(SpecError, match="needs a profile of type azureml"):  # no such profile
        artifacts.for_provider("local", "azureml://datastores/x/paths/m", tmp_path)


def test_a_data_trigger_on_a_bucket_prefix(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcloud import pipelines as pl

    data = project / "data"
    data.mkdir()
    (data / "rows.csv").write_text("1\n")
    with running() as fake:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        uri = fake.storage.put_tree("bucket", "incoming", data)
        spec = {"name": "ongcs", "steps": [{"name": "ok", "condition": "1 > 0"}],
                "triggers": [{"data": uri, "every": "1s", "settle": "1s"}]}  # fmt: skip
        assert pl.schedule(write(project, spec))["warnings"] == []
        now = time.time()
        assert pl.tick(now=now + 2) == []  # unchanged
        (data / "rows.csv").write_text("1\n2\n")
        fake.storage.put_tree("bucket", "incoming", data)  # new data lands in the bucket
        assert pl.tick(now=now + 4) == []  # noticed; fires once it stays so for `settle`
        fired = pl.tick(now=now + 6)
        assert len(fired) == 1 and fired[0].reason.startswith(f"data {uri}: content digest")
        assert pl.tick(now=now + 8) == []
    assert pl.wait(str(fired[0].run_id), timeout=60).state == "SUCCEEDED"
