"""The clouds' naming rules, checked when a profile is read (issue 10, item 8).

A name the cloud would refuse (``bucket: b``) fails here with the field named and the rule, not
minutes later as ``InvalidBucketName`` from the far end. Each checker returns the value or raises
``ValueError`` (pydantic turns it into the profile's ``ConfigError``). The rules are the clouds'
published ones; they are deliberately not stricter.
"""

from __future__ import annotations

import ipaddress
import re

_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_S3_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", "--x-s3", "--table-s3", ".mrap")
_GCS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_IAM_ROLE = re.compile(r"^arn:aws(?:-[a-z]+)*:iam::\d{12}:role/(?:[\w+=,.@-]+/)*[\w+=,.@-]{1,64}$")
_GCP_LOCATION = re.compile(r"^[a-z]+(?:-[a-z]+)+\d+$")
_GCP_PROJECT = re.compile(
    r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][a-z0-9-]{4,28}[a-z0-9]$"
)
_AZURE_GROUP = re.compile(r"^[\w().-]{0,89}[\w()-]$")
_AZURE_WORKSPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def s3_bucket(name: str) -> str:
    """S3 general purpose bucket naming rules."""
    rule = "3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
    if not _S3_BUCKET.match(name) or ".." in name or _is_ip(name):
        raise ValueError(f"{name!r} is not a valid S3 bucket name ({rule})")
    if name.startswith(_S3_RESERVED_PREFIXES) or name.endswith(_S3_RESERVED_SUFFIXES):
        raise ValueError(f"{name!r} uses a prefix or suffix S3 reserves")
    return name


def gcs_bucket(name: str) -> str:
    """Cloud Storage bucket naming rules (dotted names: each part at most 63 characters)."""
    rule = (
        "3-63 lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or "
        "digit (up to 222 with dots, each part at most 63)"
    )
    too_long = len(name) > 63 and ("." not in name or any(len(p) > 63 for p in name.split(".")))
    if not _GCS_BUCKET.match(name) or too_long or ".." in name or _is_ip(name):
        raise ValueError(f"{name!r} is not a valid Cloud Storage bucket name ({rule})")
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        raise ValueError(
            f"{name!r}: Cloud Storage bucket names may not contain 'google' or start with 'goog'"
        )
    return name


def iam_role_arn(arn: str) -> str:
    if not _IAM_ROLE.match(arn):
        raise ValueError(
            f"{arn!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"
        )
    return arn


def gcp_location(location: str) -> str:
    """A Google Cloud region such as us-central1 or europe-west4 (Vertex has no zones)."""
    if not _GCP_LOCATION.match(location):
        raise ValueError(
            f"{location!r} is not a Google Cloud region (e.g. us-central1, europe-west4)"
        )
    return location


def gcp_project(project: str) -> str:
    if not _GCP_PROJECT.match(project):
        raise ValueError(
            f"{project!r} is not a Google Cloud project id (6-30 lowercase letters, digits, '-', "
            "starting with a letter)"
        )
    return project


def azure_subscription(value: str) -> str:
    if not _GUID.match(value):
        raise ValueError(f"{value!r} is not a subscription id (a GUID)")
    return value


def azure_resource_group(name: str) -> str:
    if not _AZURE_GROUP.match(name):
        raise ValueError(
            f"{name!r} is not a resource group name (1-90 letters, digits, '_', '-', '.', '(' "
            "and ')', not ending with '.')"
        )
    return name


def azure_workspace(name: str) -> str:
    if not _AZURE_WORKSPACE.match(name):
        raise ValueError(
            f"{name!r} is not an Azure ML workspace name (3-33 letters, digits, '-', '_', "
            "starting with a letter or digit)"
        )
    return name
