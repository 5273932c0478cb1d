"""``mlcloud.yaml`` profiles and which one is in force.

Precedence for the profile name: ``--provider`` flag > ``MLCLOUD_PROVIDER`` > the project file's
``default`` > the user file's ``default`` > ``local``. The project file is ``$MLCLOUD_CONFIG`` or
the first ``mlcloud.yaml`` in the working directory or its parents; the user file lives in the
user config dir. Profiles from both are merged (project wins by name). A name that is not a
profile is taken to be a provider type (``--provider sagemaker``) with default settings, so
mlcloud works with no file at all.

This module only reads files: it knows no provider types. Whether a profile's ``type`` names a
provider is checked by the registry when a provider is resolved (``registry.resolve_profile``),
so the layers stay one-way (config never calls up into the registry).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlcloud.errors import ConfigError

FILENAME = "mlcloud.yaml"
BUILTIN_DEFAULT = "local"
#: ``Profile.source`` of a profile that no file defines: a bare provider type, default settings
IMPLIED = "built-in"
SettingsT = TypeVar("SettingsT", bound=BaseModel)


@dataclass(frozen=True)
class Profile:
    name: str
    type: str
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = IMPLIED  # the file it came from
    #: ``tracking: {mlflow: URI}``: every job of the profile gets MLFLOW_TRACKING_URI (any type)
    tracking: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    profiles: dict[str, Profile]
    default: str
    files: tuple[Path, ...]

    def resolve(self, name: str | None = None) -> Profile:
        """The profile to use: the explicit ``name``, else env, else the files' default.

        A name that is not a profile stands for the provider type of that name with default
        settings (``source`` is :data:`IMPLIED`); the registry rejects it if no provider has
        that type.
        """
        chosen = name or os.environ.get("MLCLOUD_PROVIDER") or self.default
        if chosen in self.profiles:
            return self.profiles[chosen]
        return Profile(name=chosen, type=chosen, source=IMPLIED)


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mlcloud" / FILENAME


def project_config_path(start: Path | None = None) -> Path | None:
    env = os.environ.get("MLCLOUD_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            what = "a directory" if path.is_dir() else "missing"
            raise ConfigError(
                f"MLCLOUD_CONFIG points to {path}, which is {what}",
                hint="point it at an mlcloud.yaml file, or unset it",
            )
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / FILENAME
        if candidate.is_file():
            return candidate
    return None


def load_config(start: Path | None = None) -> Config:
    profiles: dict[str, Profile] = {}
    default = BUILTIN_DEFAULT
    files: list[Path] = []
    user = user_config_path()
    project = project_config_path(start)
    for path in (user if user.is_file() else None, project):
        if path is None:
            continue
        file_default, file_profiles = _read_file(path)
        profiles.update(file_profiles)
        default = file_default or default
        files.append(path)
    return Config(profiles=profiles, default=default, files=tuple(files))


def _read_file(path: Path) -> tuple[str | None, dict[str, Profile]]:
    from mlcloud.yamlio import read_yaml

    data = read_yaml(path, what="config file", error=ConfigError)
    if data is None:
        return None, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'default' and 'profiles'")
    unknown = sorted(str(k) for k in data if k not in ("default", "profiles"))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; allowed: default, profiles")
    raw_profiles = data.get("profiles") or {}
    if not isinstance(raw_profiles, dict):
        raise ConfigError(f"{path}: 'profiles' must be a mapping of name -> settings")
    profiles: dict[str, Profile] = {}
    for name, body in raw_profiles.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{path}: profile names must be non-empty strings, got {name!r}")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            raise ConfigError(
                f"{path}: profile {name!r} needs a 'type'",
                hint="the provider type, e.g. type: local (`mlcloud providers` lists them)",
            )
        settings = {str(k): v for k, v in body.items() if k not in ("type", "tracking")}
        tracking = _tracking(body.get("tracking"), f"{path}: profile {name!r}", path.parent)
        profiles[name] = Profile(
            name=name, type=body["type"], settings=settings, source=str(path), tracking=tracking
        )
    default = data.get("default")
    if default is not None and not isinstance(default, str):
        raise ConfigError(f"{path}: 'default' must be a profile name, got {default!r}")
    return default, profiles


def tracking_uri(profile: Profile) -> str | None:
    """The MLflow tracking URI the jobs of ``profile`` get: its ``tracking: {mlflow: URI}``,
    else the submitter's MLFLOW_TRACKING_URI (a relative path taken from the working dir)."""
    if profile.tracking.get("mlflow"):
        return profile.tracking["mlflow"]
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return _mlflow_uri(env, "MLFLOW_TRACKING_URI", Path.cwd()) if env else None


def _tracking(value: object, where: str, base: Path) -> dict[str, str]:
    """A profile's ``tracking: {mlflow: URI}``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"mlflow"}:
        raise ConfigError(f"{where}: 'tracking' must be a mapping like {{mlflow: URI}}")
    uri = value.get("mlflow")
    if uri is None:
        return {}
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"{where}: tracking.mlflow must be a tracking URI")
    return {"mlflow": _mlflow_uri(uri, f"{where}: tracking.mlflow", base)}


def _mlflow_uri(uri: str, where: str, base: Path) -> str:
    """A relative path (``./mlruns``, ``sqlite:///mlflow.db``) is taken from ``base``, not the
    job's working directory. A password in the URI is refused: the URI is printed in plans and
    stored with the job; credentials travel as MLFLOW_TRACKING_PASSWORD / _TOKEN in the job's
    ``env`` ({secret: ...} / {from_env: ...}), which are never printed."""
    from urllib.parse import urlsplit

    if urlsplit(uri).password:
        raise ConfigError(
            f"{where} carries a password",
            hint="drop it from the URI; give the job env MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or _TOKEN) as {secret: ...} or {from_env: ...}",
        )
    if "://" not in uri and not uri.startswith("file:"):  # a plain path: MLflow's file store
        return str((base / Path(uri).expanduser()).resolve())
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((base / uri[len("sqlite:///") :]).resolve())
    return uri


#: the settings a dry-run found missing, in order; ``None`` outside :func:`placeholders`
_MISSING: ContextVar[list[str] | None] = ContextVar("mlcloud_missing_settings", default=None)


@contextmanager
def placeholders() -> Iterator[list[str]]:
    """While active (a dry-run), a missing setting is a ``<name>`` placeholder instead of an
    error, and its name is appended to the yielded list: a newcomer sees the whole plan and
    every missing setting at once. A real submit never enters this, so it still refuses."""
    missing: list[str] = []
    token = _MISSING.set(missing)
    try:
        yield missing
    finally:
        _MISSING.reset(token)


def placeholder(name: str) -> str | None:
    """``"<name>"`` (and ``name`` noted as missing) inside :func:`placeholders`, else None."""
    missing = _MISSING.get()
    if missing is None:
        return None
    if name not in missing:
        missing.append(name)
    return f"<{name}>"


def profile_settings(model: type[SettingsT], profile: Profile) -> SettingsT:
    """Validate a profile's settings against the provider's settings model (ConfigError only).
    In a dry-run (:func:`placeholders`) required settings that are absent become placeholders."""
    try:
        return model.model_validate(profile.settings)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        absent = [str(err["loc"][0]) for err in errors if err["type"] == "missing" and err["loc"]]
        if _MISSING.get() is not None and len(absent) == len(errors):
            filled: dict[str, Any] = {name: placeholder(name) for name in absent}
            # Unvalidated on purpose: a placeholder would fail the field's format check.
            return model.model_construct(None, **{**profile.settings, **filled})
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(settings)'}: {err['msg']}"
            for err in errors
        )
        raise ConfigError(
            f"profile {profile.name!r} ({profile.type}) has invalid settings: {problems}",
            hint=f"fix it in {profile.source}",
        ) from None


STARTER = """\
# mlcloud configuration: named profiles, one per place your jobs can run.
# Pick one with --provider NAME, MLCLOUD_PROVIDER=NAME, or `default` below.
default: local

profiles:
  local:
    type: local            # this machine: subprocesses, torchrun, bentoml serve

  # aws:
  #   type: sagemaker
  #   region: us-east-1
  #   role_arn: arn:aws:iam::123456789012:role/mlcloud
  #   bucket: my-bucket    # staging for code and outputs

  # gcp:
  #   type: vertex
  #   project: my-project
  #   location: us-central1
  #   staging_bucket: gs://my-bucket

  # azure:
  #   type: azureml
  #   subscription_id: 00000000-0000-0000-0000-000000000000
  #   resource_group: rg
  #   workspace: ws
  #   compute: cpu-cluster
"""
