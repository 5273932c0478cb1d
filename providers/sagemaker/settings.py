"""The settings of a ``type: sagemaker`` profile in mlcloud.yaml."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlcloud.config import placeholder
from mlcloud.errors import ConfigError
from providers.common import names


class SageMakerSettings(BaseModel):
    """Validated with ``mlcloud.config.profile_settings``; unknown keys are an error.

    Credentials are never settings: boto3's own chain (env, ``aws_profile``/AWS_PROFILE, SSO,
    instance roles) supplies them, so nothing secret lands in mlcloud.yaml or the store.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = Field(default=None, description="else AWS_REGION / the AWS profile's")
    role_arn: str | None = Field(default=None, description="execution role of jobs and models")
    bucket: str | None = Field(default=None, description="S3 bucket for code, inputs, outputs")
    prefix: str = "mlcloud"
    endpoint_url: str | None = Field(
        default=None, description="one endpoint for every AWS service (else AWS_ENDPOINT_URL*)"
    )
    aws_profile: str | None = Field(default=None, description="a named AWS CLI profile")
    training_image: str | None = Field(default=None, description="default training image")
    serving_image: str | None = Field(default=None, description="the mlcloud serving image")
    tags: dict[str, str] = Field(default_factory=dict)
    volume_size_gb: int = Field(default=30, ge=1, le=16384, description="per training instance")
    model_package_group: str | None = Field(
        default=None, description="register every deployed model version in this group"
    )
    max_attempts: int = Field(default=5, ge=1, le=20, description="botocore standard retries")
    log_poll_seconds: float = Field(default=5.0, gt=0)
    wait_poll_seconds: float = Field(default=15.0, gt=0)
    endpoint_wait_seconds: float = Field(default=1800.0, gt=0)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        return v if v is None else names.s3_bucket(v)

    @field_validator("role_arn")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        return v if v is None else names.iam_role_arn(v)

    def resolved_region(self) -> str:
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            region = _profile_region(self.aws_profile)
        if not region:
            region = placeholder("region")  # a dry-run shows <region>
        if not region:
            raise ConfigError(
                "no AWS region for the sagemaker profile",
                hint="set region: in the profile, or AWS_REGION",
            )
        return region

    def need(self, field: str, why: str) -> str:
        value = getattr(self, field) or placeholder(field)  # a dry-run shows <field>
        if not value:
            raise ConfigError(
                f"the sagemaker profile needs '{field}' to {why}",
                hint=f"add {field}: ... to the profile in mlcloud.yaml",
            )
        return str(value)

    def s3_uri(self, *parts: str) -> str:
        bucket = self.need("bucket", "stage code, inputs and outputs")
        key = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return f"s3://{bucket}/{key}"

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))


def _profile_region(aws_profile: str | None) -> str | None:
    # Only when no region is set anywhere else: ask botocore (lazily) for the AWS profile's.
    import botocore.session

    session = botocore.session.Session(profile=aws_profile) if aws_profile else None
    try:
        region = (session or botocore.session.get_session()).get_config_variable("region")
        return str(region) if region else None
    except Exception:  # a missing/broken AWS profile just means "no region"
        return None
