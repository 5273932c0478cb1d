"""Settings of a ``type: vertex`` profile."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from providers.common import names

_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")


class VertexSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(description="Google Cloud project id")
    location: str = Field(default="us-central1", description="Vertex AI region")
    staging_bucket: str = Field(description="gs://bucket[/prefix] for code, inputs and outputs")
    service_account: str | None = Field(default=None, description="the jobs' service account")
    network: str | None = Field(
        default=None, description="VPC peering network: projects/NUMBER/global/networks/NAME"
    )
    api_endpoint: str | None = Field(
        default=None,
        description="Vertex API host; default <location>-aiplatform.googleapis.com. "
        "An http:// URL (a local fake) is called without credentials",
    )
    storage_endpoint: str | None = Field(
        default=None, description="Cloud Storage JSON API base URL (emulators, private endpoints)"
    )
    logging_endpoint: str | None = Field(
        default=None, description="Cloud Logging API base URL (emulators, private endpoints)"
    )
    training_image: str | None = Field(
        default=None, description="container for jobs without an image; default: a prebuilt one"
    )
    serving_image: str | None = Field(
        default=None, description="the mlcloud serving container image (needed to deploy)"
    )
    boot_disk_gb: int = Field(default=100, ge=10, le=65536)
    boot_disk_type: str = Field(default="pd-ssd")
    labels: dict[str, str] = Field(default_factory=dict)
    operation_timeout: float = Field(
        default=3600.0, gt=0, description="seconds to wait for a model upload/deploy operation"
    )

    @field_validator("staging_bucket")
    @classmethod
    def _gs(cls, v: str) -> str:
        if not v.startswith("gs://") or len(v) <= len("gs://"):
            raise ValueError("must be a gs://bucket[/prefix] URI")
        names.gcs_bucket(v[len("gs://") :].split("/", 1)[0])
        return v.rstrip("/")

    @field_validator("location")
    @classmethod
    def _location(cls, v: str) -> str:
        return names.gcp_location(v)

    @field_validator("project")
    @classmethod
    def _project(cls, v: str) -> str:
        return names.gcp_project(v)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _LABEL.match(key) or not _LABEL_VALUE.match(value):
                raise ValueError(
                    f"label {key}={value!r}: keys and values are lowercase letters, digits, "
                    "'-' and '_' (keys start with a letter), at most 63 characters"
                )
        return v

    @property
    def bucket(self) -> str:
        return self.staging_bucket.removeprefix("gs://").split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """The object-name prefix under which mlcloud keeps its files in the bucket."""
        rest = self.staging_bucket.removeprefix("gs://").partition("/")[2]
        return f"{rest}/mlcloud" if rest else "mlcloud"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    @property
    def local_endpoint(self) -> bool:
        """An http:// endpoint: a fake or emulator, never sent credentials in the clear."""
        return bool(self.api_endpoint and self.api_endpoint.startswith("http://"))
