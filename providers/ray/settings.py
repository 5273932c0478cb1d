"""Settings of a ``type: ray`` profile.

With ``address`` the profile names an existing cluster's dashboard (its Jobs API); without it
mlcloud starts a single-machine cluster for the user on first use (``cluster.py``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        default=None,
        description="the cluster's dashboard / Jobs API, http(s)://head:8265; unset: mlcloud "
        "starts a single-machine cluster on first use (token auth, 127.0.0.1)",
    )
    token: SecretStr | None = Field(default=None, description="the cluster's auth token")
    token_file: Path | None = Field(default=None, description="a file holding the auth token")
    insecure: bool = Field(
        default=False,
        description="allow a cluster that accepts requests without a token (a warning each time)",
    )
    storage: str | None = Field(
        default=None,
        description="a directory every node of the cluster sees (NFS, a shared disk): job "
        "outputs, models and checkpoints go under it. Default: $MLCLOUD_HOME/ray/storage for "
        "the cluster mlcloud starts, /tmp/mlcloud-ray (node-local) for another cluster",
    )
    # ---- the cluster mlcloud starts when there is no address ---------------------------------
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of the local cluster")
    num_gpus: int | None = Field(default=None, ge=0, description="GPUs of the local cluster")
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="where the local cluster's dashboard / Jobs API listens (token auth always)",
    )
    temp_dir: str | None = Field(
        default=None, description="the local cluster's Ray temp dir (short: it holds sockets)"
    )
    start_timeout: float = Field(default=120.0, gt=0, le=1800, description="seconds")
    # ---- jobs --------------------------------------------------------------------------------
    cancel_grace: float = Field(
        default=10.0, gt=0, le=600, description="SIGTERM -> SIGKILL of a cancelled job, seconds"
    )
    # ---- endpoints (Ray Serve) ---------------------------------------------------------------
    serve_host: str = Field(
        default="127.0.0.1",
        description="where the Ray Serve HTTP proxy (on the head node) listens; it does not "
        "check tokens, so anything but loopback exposes the models to the network",
    )
    serve_port: int = Field(default=8000, ge=1, le=65535, description="the Serve proxy's port")
    deploy_timeout: float = Field(
        default=300.0, gt=0, le=3600, description="seconds a deploy waits for its replicas"
    )

    @field_validator("address")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be the dashboard's http(s)://host:port (the Jobs API, default port 8265); "
                "ray:// client addresses are not used"
            )
        return v.rstrip("/")

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith("file://"):
            raise ValueError("must be a directory every node sees (s3://, gs:// are not mounted)")
        return v.removeprefix("file://") if v else v

    @model_validator(mode="after")
    def _one_token(self) -> RaySettings:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.address is None and (self.token is not None or self.token_file is not None):
            raise ValueError(
                "token/token_file are for a cluster at `address`; the cluster mlcloud starts "
                "makes its own token"
            )
        return self

    @property
    def local(self) -> bool:
        """No address: the single-machine cluster mlcloud starts and stops."""
        return self.address is None

    def read_token(self) -> str | None:
        """The configured token, or None (the file is read on each call: it may rotate)."""
        if self.token is not None:
            return self.token.get_secret_value().strip() or None
        if self.token_file is not None:
            return self.token_file.expanduser().read_text(encoding="utf-8").strip() or None
        return None
