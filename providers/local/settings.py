"""Settings of a ``type: local`` profile (all optional)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LocalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rdzv_endpoint: str | None = Field(
        default=None,
        description="host:port of the head node for a multi-machine torchrun job; "
        "unset: every node runs on this machine with a loopback rendezvous",
    )
    nodes_here: int | None = Field(
        default=None, ge=1, description="torchrun agents to start on this machine"
    )
    cancel_grace: float = Field(default=10.0, gt=0, le=600, description="SIGTERM → SIGKILL, s")
    deploy_timeout: float = Field(
        default=120.0, gt=0, le=3600, description="seconds to wait for a deployment to be ready"
    )
    python: str | None = Field(default=None, description="interpreter for torchrun and helpers")
