"""Fixtures: the fake Vertex server and a VertexProvider whose real GAPIC/GCS/logging clients
point at it (REST transport, anonymous credentials, http://127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcloud.config import Profile
from mlcloud.store import Store
from providers.vertex import VertexProvider, errors, jobs
from tests.fakes.vertex import FakeVertex, running

PROJECT, LOCATION, BUCKET = "mlcloud-test", "us-central1", "mlcloud-staging"
SERVING_IMAGE = "us-docker.pkg.dev/mlcloud-test/mlcloud/serve:0.1"


def settings_for(url: str) -> dict[str, object]:
    return {
        "project": PROJECT,
        "location": LOCATION,
        "staging_bucket": f"gs://{BUCKET}",
        "api_endpoint": url,
        "storage_endpoint": url,
        "logging_endpoint": url,
        "serving_image": SERVING_IMAGE,
        "service_account": "trainer@mlcloud-test.iam.gserviceaccount.com",
        "labels": {"team": "ml"},
    }


@pytest.fixture
def fake() -> Iterator[FakeVertex]:
    with running() as server:
        yield server


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "mlcloud-home"
    monkeypatch.setenv("MLCLOUD_HOME", str(path))
    monkeypatch.setattr(jobs, "LOG_POLL", 0.05)
    monkeypatch.setattr(jobs, "CANCEL_WAIT", 10.0)
    monkeypatch.setattr(errors, "READ_RETRY_TIMEOUT", 2.0)
    return path


@pytest.fixture
def provider(fake: FakeVertex, home: Path) -> Iterator[VertexProvider]:
    store = Store.open()
    profile = Profile(name="gcp-test", type="vertex", settings=settings_for(fake.url))
    vertex = VertexProvider(profile, store)
    vertex.fake = fake  # type: ignore[attr-defined]  # for conformance settle()
    yield vertex
    store.close()


def run_on_node(
    fake: FakeVertex, native_id: str, root: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run worker pool 0 of a CustomJob the fake received, as a Vertex node would.

    The fake's bucket is laid out under ``root/gcs`` (the Cloud Storage FUSE mount), Vertex's
    AIP_* and CLUSTER_SPEC variables are set, and files the job writes under the mount are
    copied back into the fake's bucket afterwards (FUSE writes go to the bucket).
    """
    from tests.fakes.vertex.server import Blob

    gcs = root / "gcs"
    for (bucket, key), blob in fake.storage.blobs.items():
        target = gcs / bucket / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.data)
    before = {p: p.stat().st_mtime_ns for p in gcs.rglob("*") if p.is_file()}
    spec = fake.vertex.jobs[native_id].job_spec
    container = spec.worker_pool_specs[0].container_spec
    argv = list(container.command) + list(container.args)
    assert argv[0] == "python3" and argv[3].startswith("/gcs/"), argv[:4]
    argv[0], argv[3] = sys.executable, str(root) + argv[3]
    base = spec.base_output_directory.output_uri_prefix
    cluster = {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"]}
    env = {
        "PATH": os.environ["PATH"],
        **{e.name: e.value for e in container.env},
        "AIP_MODEL_DIR": f"{base}/model/",
        "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
        "CLUSTER_SPEC": json.dumps(
            {"cluster": cluster, "task": {"type": "workerpool0", "index": 0}}
        ),
        "MLCLOUD_FS_ROOT": str(root),
        "MLCLOUD_WORKDIR": str(root / "work"),
        **(extra_env or {}),
    }
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    for path in gcs.rglob("*"):
        if path.is_file() and before.get(path) != path.stat().st_mtime_ns:
            bucket, _, key = path.relative_to(gcs).as_posix().partition("/")
            fake.storage.blobs[(bucket, key)] = Blob(
                path.read_bytes(), 1, "application/octet-stream"
            )
    return out
