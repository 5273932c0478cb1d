"""Settings of a ``type: azureml`` profile."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from providers.common import names

SERVERLESS = "serverless"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,31}$")


class AzureMLSettings(BaseModel):
    """What a profile says about the workspace. The credential is never a setting: it comes
    from azure-identity's DefaultAzureCredential (environment, managed identity, az login)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subscription_id: str = Field(description="Azure subscription id")
    resource_group: str = Field(description="resource group of the workspace")
    workspace: str = Field(description="Azure ML workspace name")
    compute: str = Field(
        default=SERVERLESS,
        description="compute cluster name, or 'serverless' (instance type from the VM catalog)",
    )
    environment: str | None = Field(
        default=None,
        description="default environment for jobs without image/framework: a curated or "
        "registered 'name@version' / 'name:version', or a container image",
    )
    serving_image: str | None = Field(
        default=None, description="the mlcloud serving container image (needed to deploy)"
    )
    instance_type: str | None = Field(
        default=None, description="default VM size for serverless jobs and endpoints"
    )
    serving_instance_type: str = Field(
        default="Standard_DS3_v2", description="VM size of online deployments"
    )
    datastore: str = Field(default="workspaceblobstore", description="datastore for outputs")
    tags: dict[str, str] = Field(default_factory=dict)
    mirror_traffic: int = Field(
        default=0,
        ge=0,
        le=50,
        description="during a blue/green update, percent of live traffic mirrored to the new "
        "deployment before the switch (0: no mirroring)",
    )

    mirror_seconds: float = Field(
        default=0.0, ge=0, le=3600, description="how long the mirrored share runs before the switch"
    )

    @field_validator("subscription_id")
    @classmethod
    def _subscription(cls, v: str) -> str:
        return names.azure_subscription(v)

    @field_validator("resource_group")
    @classmethod
    def _group(cls, v: str) -> str:
        return names.azure_resource_group(v)

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, v: str) -> str:
        return names.azure_workspace(v)

    @field_validator("compute")
    @classmethod
    def _compute(cls, v: str) -> str:
        if v != SERVERLESS and not _NAME.match(v):
            raise ValueError(
                "a compute cluster name (2-32 letters, digits, '-', '_') or 'serverless'"
            )
        return v

    @property
    def serverless(self) -> bool:
        return self.compute == SERVERLESS
