"""The fake workspace's data plane: discovery, run history, blob storage and scoring.

Blob storage is the fake blob handler (not Azurite): azure-storage-blob's real Put Blob / Put
Block / Put Block List / Set Metadata requests land in ``blobs``. Scoring does what the mlcloud
serving container does: it loads the deployed model's files (the bytes the SDK uploaded) with
mlcloud's own loader and predicts.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any

from tests.fakes.azureml import blobstore
from tests.fakes.azureml.common import (
    API_HOST,
    BLOB_HOST,
    RUN_DETAILS,
    Response,
    error,
    json_response,
)


class DataPlane:
    """Mixed into :class:`FakeAzureML`; uses its ``resources`` and ``_key``."""

    resources: dict[str, dict[str, Any]]
    blobs: dict[str, bytes]
    blocks: dict[str, bytes]
    blob_meta: dict[str, dict[str, str]]
    job_logs: dict[str, str]
    scored: list[dict[str, Any]]
    loaded: dict[str, Any]
    model_dirs: list[Any]
    predictor: Any

    def _key(self, rest: str) -> str:
        raise NotImplementedError

    def _data_plane(self, path: str) -> Response:
        if path == "/discovery":
            api = f"https://{API_HOST}"
            return json_response(
                200, {"api": api, "catalog": api, "experimentation": api, "history": api}
            )
        m = RUN_DETAILS.match(path)
        if m is None:
            return error(404, "NotFound", f"no data-plane route {path}")
        key = self._key(f"/jobs/{m['run']}")
        if key not in self.resources:
            return error(404, "UserError", f"run {m['run']} not found")
        props = self.resources[key]["properties"]
        logs_key = f"azureml/ExperimentRun/dcid.{m['run']}/user_logs/std_log.txt"
        if m["run"] in self.job_logs:
            self.blobs[logs_key] = self.job_logs[m["run"]].encode()
        details: dict[str, Any] = {
            "runId": m["run"],
            "status": props.get("status"),
            "logFiles": {"user_logs/std_log.txt": f"https://{BLOB_HOST}/{logs_key}?sv=1&sig=fake"}
            if logs_key in self.blobs
            else {},
        }
        if props.get("error"):
            details["error"] = {"error": props["error"]}
        return json_response(200, details)

    # ---- blob storage and scoring --------------------------------------------
    def _blob(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Response:
        name = path.lstrip("/")
        ok = {"ETag": '"0x1"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}
        if method == "PUT" and query.get("comp") == "block":
            self.blocks[f"{name}/{query['blockid']}"] = body
            return 201, ok, b""
        if method == "PUT" and query.get("comp") == "blocklist":
            ids = re.findall(r"<(?:Latest|Uncommitted|Committed)>([^<]+)<", body.decode())
            self.blobs[name] = b"".join(self.blocks.pop(f"{name}/{i}", b"") for i in ids)
            return 201, ok, b""
        if method == "PUT" and query.get("comp") == "metadata":
            self.blob_meta[name] = {
                k.lower()[len("x-ms-meta-") :]: v
                for k, v in headers.items()
                if k.lower().startswith("x-ms-meta-")
            }
            return 200, ok, b""
        if method == "PUT" and query.get("restype") == "container":
            return 201, ok, b""
        if method == "PUT":
            self.blobs[name] = body
            return 201, {**ok, "Content-MD5": ""}, b""
        listing = query.get("comp") == "list"  # List Blobs: ?restype=container&comp=list
        if method in ("HEAD", "GET") and query.get("restype") == "container" and not listing:
            return 200, ok, b""
        if method in ("HEAD", "GET") and name in self.blobs:
            data = self.blobs[name]
            ok = blobstore.versioned(data)  # the ETag follows the content
            meta = {f"x-ms-meta-{k}": v for k, v in self.blob_meta.get(name, {}).items()}
            ranged = _ranged(data, headers) if method == "GET" else None
            if ranged is not None:  # x-ms-range / Range: 206 with Content-Range, as Azure does
                return 206, {**ok, **meta, **ranged[0], "x-ms-blob-type": "BlockBlob"}, ranged[1]
            return (
                200,
                {
                    **ok,
                    **meta,
                    "Content-Length": str(len(data)),
                    "x-ms-blob-type": "BlockBlob",
                    "Content-Type": "application/octet-stream",
                },
                (data if method == "GET" else b""),
            )
        if method == "GET" and query.get("comp") == "list":
            return (
                200,
                {"Content-Type": "application/xml"},
                blobstore.blob_list(self.blobs, name, query),
            )
        return 404, {"x-ms-error-code": "BlobNotFound"}, b""

    def _score(self, path: str, headers: dict[str, str], body: bytes) -> Response:
        """What the serving container does: load the deployment's model files (the bytes the
        SDK uploaded) with mlcloud's own loader and predict. Models whose files were never
        uploaded here (e.g. a job's output folder) fall back to ``self.predictor``."""
        endpoint = path.strip("/").split("/")[0]
        key = self._key(f"/onlineEndpoints/{endpoint}")
        if key not in self.resources:
            return error(404, "NotFound", f"endpoint {endpoint} not found")
        lower = {k.lower(): v for k, v in headers.items()}
        if lower.get("authorization", "") != f"Bearer key-{endpoint}":
            return 401, {"Content-Type": "text/plain"}, b"unauthorized"
        traffic = self.resources[key]["properties"].get("traffic") or {}
        live = sorted(d for d, pct in traffic.items() if pct > 0)
        chosen = lower.get("azureml-model-deployment") or (
            max(live, key=lambda d: (traffic[d], d)) if live else None
        )
        if chosen is None:
            return 424, {"Content-Type": "text/plain"}, b"no deployment takes traffic"
        from mlcloud.modeldir import ModelDirError
        from serving.inputs import InputError, extract_instances, parse_json

        try:
            instances = extract_instances(parse_json(body))
            predictions = self._predictor(endpoint, chosen)(instances)
        except InputError as err:
            return error(400, "BadRequest", str(err))
        except ModelDirError as err:  # Azure answers 424 when the model container fails
            return error(424, "ModelError", str(err))
        self.scored.append({"endpoint": endpoint, "deployments": live, "served_by": chosen})
        # Azure ML names the deployment that answered (azureml-model-deployment)
        return json_response(
            200, {"predictions": predictions}, {"azureml-model-deployment": chosen}
        )

    def _predictor(self, endpoint: str, deployment: str) -> Any:
        import tempfile
        from pathlib import Path

        from mlcloud.modeldir import TRUST_ENV
        from serving.loaders import load_model

        props = self.resources[self._key(f"/onlineEndpoints/{endpoint}/deployments/{deployment}")]
        model_key = str(props["properties"].get("model", "")).lower()
        model = self.resources.get(model_key, {}).get("properties", {})
        folder = str(model.get("modelUri", "")).partition("/paths/")[2].strip("/")
        prefix = f"azureml-blobstore/{folder}/"
        files = {
            k[len(prefix) :]: v for k, v in self.blobs.items() if folder and k.startswith(prefix)
        }
        if not files:
            return self.predictor
        if model_key not in self.loaded:
            root = Path(tempfile.mkdtemp(prefix="fake-azureml-model-"))
            self.model_dirs.append(root)
            for rel, data in files.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
            env = props["properties"].get("environmentVariables") or {}  # the container's env
            with _own_imports(root):  # one container per deployment: no shared modules
                self.loaded[model_key] = load_model(root, trust=env.get(TRUST_ENV, "")).predict
        return self.loaded[model_key]

    def close(self) -> None:
        """Remove the model folders the scoring handler materialised."""
        import shutil

        for root in self.model_dirs:
            shutil.rmtree(root, ignore_errors=True)
        self.model_dirs.clear()
        self.loaded.clear()


@contextlib.contextmanager
def _own_imports(root: Any) -> Iterator[None]:
    """Import a model dir's modules as a fresh process would, then forget them again."""
    names = {p.stem for p in root.glob("*.py")} | {
        p.parent.name for p in root.glob("*/__init__.py")
    }
    shadowed = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in names}
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in names]:
            del sys.modules[name]
        sys.modules.update(shadowed)


def _ranged(data: bytes, headers: dict[str, str]) -> tuple[dict[str, str], bytes] | None:
    """A ranged read (``bytes=START-END``, END inclusive) of ``data``, or None when unranged."""
    lower = {k.lower(): v for k, v in headers.items()}
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", lower.get("x-ms-range") or lower.get("range") or "")
    if m is None:
        return None
    start = int(m[1])
    end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
    part = data[start : end + 1]
    return {
        "Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}",
        "Content-Length": str(len(part)),
        "Content-Type": "application/octet-stream",
    }, part
