"""The baseline a window is compared with: the profile ``runtime.save_model(reference=X)``
stored in a model dir (:mod:`mlcloud.modelprofile`), found for an endpoint's serving version or
a registry reference, and checked against the model's manifest before it is read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcloud import modeldir, modelprofile
from mlcloud.errors import MlcloudError, NotFoundLocally

if TYPE_CHECKING:
    from mlcloud.records import EndpointRecord
    from mlcloud.store import Store

NO_PROFILE_HINT = (
    "save the model with a baseline: runtime.save_model(model, ..., reference=X_train), "
    "or compare with another version: --baseline NAME:VERSION"
)


@dataclass
class Baseline:
    """A model's training profile: ``profile`` is the JSON document (see
    :mod:`mlcloud.modelprofile`), ``sample`` the row sample of its numeric columns."""

    source: str  # the model dir (or the reference it was resolved from)
    profile: dict[str, Any]
    sample: np.ndarray
    sample_columns: list[str]

    @property
    def feature_names(self) -> list[str]:
        return [str(f["name"]) for f in self.profile["features"]]

    def feature(self, name: str) -> dict[str, Any]:
        return next(f for f in self.profile["features"] if f["name"] == name)

    def column(self, name: str) -> np.ndarray | None:
        """The sampled values of a numeric column, NaN dropped (None: not sampled)."""
        if name not in self.sample_columns:
            return None
        values: np.ndarray = self.sample[:, self.sample_columns.index(name)]
        present: np.ndarray = values[~np.isnan(values)]
        return present

    def prediction(self) -> tuple[str, dict[str, Any]] | None:
        """The prediction distribution's baseline: the model's own predictions on its
        training features, else the training target; with the name its sample is under."""
        for key, column in (("prediction", modelprofile.PREDICTION),
                            ("target", modelprofile.TARGET)):  # fmt: skip
            if key in self.profile:
                return column, self.profile[key]
        return None


def load(root: Path | str, source: str | None = None) -> Baseline:
    """The baseline stored in model dir ``root``; its files must match the manifest's sha256."""
    root = Path(root)
    if not (root / modeldir.MANIFEST).is_file():
        raise NotFoundLocally(
            f"{root} is not an mlcloud model directory (no {modeldir.MANIFEST})",
            hint=NO_PROFILE_HINT,
        )
    manifest = modeldir.read_manifest(root)
    files = manifest.get("files") or {}
    if modelprofile.PROFILE not in files:
        raise NotFoundLocally(f"the model at {root} has no training baseline", hint=NO_PROFILE_HINT)
    profile = json.loads(_checked(root, modelprofile.PROFILE, files).decode("utf-8"))
    sample_meta = profile.get("sample") or {}
    columns = [str(c) for c in sample_meta.get("columns") or []]
    sample = np.empty((0, len(columns)))
    if columns:
        import io

        raw = _checked(root, str(sample_meta.get("file", modelprofile.SAMPLE)), files)
        sample = np.load(io.BytesIO(raw), allow_pickle=False)
    return Baseline(source=source or str(root), profile=profile, sample=sample,
                    sample_columns=columns)  # fmt: skip


def _checked(root: Path, name: str, files: dict[str, str]) -> bytes:
    """The bytes of a listed file, refused when they differ from the manifest's sha256."""
    import hashlib

    if name not in files:
        raise modeldir.ModelDirError(f"{name} is not listed in {root}/{modeldir.MANIFEST}")
    try:
        data = (root / name).read_bytes()
    except OSError as e:
        raise modeldir.ModelDirError(f"cannot read {root / name}: {e}") from None
    if hashlib.sha256(data).hexdigest() != files[name]:
        raise modeldir.ModelDirError(
            f"{name} does not match {modeldir.MANIFEST} in {root}: refusing a modified baseline"
        )
    return data


def serving_model(record: EndpointRecord) -> tuple[str | None, str | None]:
    """(version id, model dir) the endpoint serves: its newest version when it serves several
    (a canary's baseline is the new model's), else the one model."""
    versions = record.details.get("versions") or {}
    newest = record.details.get("newest")
    if newest and newest in versions:
        return str(newest), str(versions[newest].get("model") or record.model or "")
    return None, record.model


def for_endpoint(record: EndpointRecord, store: Store, ref: str | None = None) -> Baseline:
    """The baseline for ``record``: of registry reference / model dir ``ref`` when given, else
    of the model the endpoint serves."""
    if ref is not None:
        from mlcloud import api

        uri, _ = api.resolve_model(ref, store)
        return load(_local(uri, ref), source=ref)
    _, model = serving_model(record)
    if not model:
        raise MlcloudError(f"endpoint {record.name} records no model", hint=NO_PROFILE_HINT)
    return load(_local(model, record.name), source=model)


def _local(uri: str, what: str) -> Path:
    path = Path(uri.removeprefix("file://")).expanduser()
    if "://" in uri.removeprefix("file://") or not path.is_dir():
        raise NotFoundLocally(
            f"the model of {what} is not a local directory ({uri}), so its baseline cannot be read",
            hint="download the model dir and pass it: --baseline PATH, or register it locally",
        )
    return path
