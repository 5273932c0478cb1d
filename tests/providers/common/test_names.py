"""Names a cloud would refuse fail when the profile is read, naming the field (issue 10, 8)."""

from __future__ import annotations

import pytest

from mlcloud.config import Profile
from mlcloud.errors import ConfigError
from mlcloud.registry import get_provider
from mlcloud.store import Store
from providers.common import names


@pytest.mark.parametrize("good", ["my-bucket", "abc", "a.b.c", "logs-2026.example", "a" * 63])
def test_valid_s3_buckets(good: str) -> None:
    assert names.s3_bucket(good) == good


@pytest.mark.parametrize(
    "bad",
    ["b", "ab", "a" * 64, "My-Bucket", "my_bucket", "-bucket", "bucket-", "a..b", "192.168.5.4",
     "xn--bucket", "sthree-x", "data-s3alias", "x--ol-s3"],
)  # fmt: skip
def test_invalid_s3_buckets(bad: str) -> None:
    with pytest.raises(ValueError, match="S3"):
        names.s3_bucket(bad)


@pytest.mark.parametrize(
    "good", ["my-bucket", "my_bucket", "a.b", "x" * 63, ".".join(["y" * 60] * 3)]
)
def test_valid_gcs_buckets(good: str) -> None:
    assert names.gcs_bucket(good) == good


@pytest.mark.parametrize(
    "bad", ["b", "x" * 64, "Upper", "goog-data", "my-google-data", "-x-", "10.0.0.1"]
)
def test_invalid_gcs_buckets(bad: str) -> None:
    with pytest.raises(ValueError, match="Cloud Storage"):
        names.gcs_bucket(bad)


def test_role_arns() -> None:
    assert names.iam_role_arn("arn:aws:iam::123456789012:role/mlcloud")
    assert names.iam_role_arn("arn:aws-cn:iam::123456789012:role/service-role/SageMaker-x")
    for bad in ("mlcloud", "arn:aws:iam::12345:role/x", "arn:aws:iam::123456789012:user/x"):
        with pytest.raises(ValueError, match="IAM role ARN"):
            names.iam_role_arn(bad)


def test_locations_and_projects() -> None:
    for good in ("us-central1", "europe-west4", "northamerica-northeast1", "me-central2"):
        assert names.gcp_location(good) == good
    for bad in ("us-central1-a", "US-CENTRAL1", "global", "uscentral"):
        with pytest.raises(ValueError, match="region"):
            names.gcp_location(bad)
    assert names.gcp_project("my-project-123") and names.gcp_project("example.com:my-proj")
    with pytest.raises(ValueError, match="project id"):
        names.gcp_project("p")


def test_azure_names() -> None:
    assert names.azure_subscription("00000000-0000-0000-0000-000000000000")
    assert names.azure_resource_group("rg") and names.azure_workspace("ws-1")
    for check, bad in (
        (names.azure_subscription, "sub"),
        (names.azure_resource_group, "rg."),
        (names.azure_workspace, "w"),
        (names.azure_workspace, "-ws"),
    ):
        with pytest.raises(ValueError):
            check(bad)


@pytest.mark.parametrize(
    ("type_", "settings", "field"),
    [
        ("sagemaker", {"region": "us-east-1", "bucket": "b"}, "bucket"),
        ("sagemaker", {"role_arn": "mlcloud"}, "role_arn"),
        ("vertex", {"project": "my-project", "staging_bucket": "gs://B"}, "staging_bucket"),
        (
            "vertex",
            {"project": "my-project", "staging_bucket": "gs://ok-b", "location": "us"},
            "location",
        ),
    ],
)
def test_a_bad_name_is_a_config_error_naming_the_field(
    type_: str, settings: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        get_provider(Profile("p", type_, settings), Store.open())
    assert field in str(err.value) and err.value.hint


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"subscription_id": "sub-1", "resource_group": "rg", "workspace": "ws1"},
         "subscription_id"),
        ({"subscription_id": "00000000-0000-4000-8000-000000000001", "resource_group": "rg.",
          "workspace": "ws1"}, "resource_group"),
        ({"subscription_id": "00000000-0000-4000-8000-000000000001", "resource_group": "rg",
          "workspace": "w"}, "workspace"),
    ],
)  # fmt: skip
def test_a_bad_azure_name_is_a_config_error_naming_the_field(
    settings: dict[str, str], field: str
) -> None:
    with pytest.raises(ConfigError) as err:
        get_provider(Profile("az", "azureml", settings), Store.open())
    assert field in str(err.value) and err.value.hint
