"""A model version → its SageMaker Model Registry entry (pure: reads the model dir only).

One model package group per mlcloud model name, one model package (a numbered version in the
group) per mlcloud version, serving the same image and model tarball a deploy would. The steps:
``CreateModelPackageGroup`` (an existing group is success: AWS answers "already exists") and
``CreateModelPackage``, new in ``PendingManualApproval``; aliases are applied afterwards by
``sync_aliases`` (``model_registry.py``).

Alias mapping: ``champion`` is the approval status (the version holding it is ``Approved``; a
version it moves away from becomes ``Rejected``; one that never held it stays
``PendingManualApproval``), because SageMaker's deploy-on-approval automations read that field;
every other alias is a tag ``mlcloud:alias:<alias>`` = the mlcloud version number.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlcloud.errors import SpecError, UnsupportedFeature
from mlcloud.records import ModelVersionRecord, Plan, PlanStep
from providers.common.native_sync import fingerprint
from providers.sagemaker.endpoint_plan import SERVING_CONTRACT
from providers.sagemaker.job_plan import Tag

if TYPE_CHECKING:
    from providers.common.staging import SourceArchive
    from providers.sagemaker.provider import SageMakerProvider

CHAMPION = "champion"
APPROVED, PENDING, REJECTED = "Approved", "PendingManualApproval", "Rejected"
ALIAS_TAG = "mlcloud:alias:"
SYNC_KEY = "mlcloud:sync"  # CustomerMetadataProperties: fingerprint of the state mlcloud left
SHA_KEY = "mlcloud:sha256"
APPROVAL = "approval status"
_GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


@dataclass(frozen=True)
class RegisterContext:
    """What ``model_registry.register`` uploads and returns."""

    group: str
    archive: SourceArchive | None  # a local model dir, packed (None: already in S3)
    bucket: str | None
    model_key: str | None
    model_url: str


def group_name(model: str) -> str:
    """The model's package group: its name when SageMaker accepts it, else a sanitized name
    with a short hash (so ``iris_v2`` and ``iris-v2`` stay two groups)."""
    if _GROUP_NAME.match(model):
        return model
    clean = re.sub(r"[^a-zA-Z0-9]+", "-", model).strip("-")[:55] or "model"
    return f"{clean}-{hashlib.sha256(model.encode()).hexdigest()[:6]}"


def alias_state(version: int, aliases: list[str], live_approval: str | None) -> dict[str, str]:
    """The alias-derived state the package should show (``live_approval``: what it shows now,
    which tells a version champion left, Rejected, from one it never reached, Pending)."""
    if CHAMPION in aliases:
        approval = APPROVED
    else:
        approval = live_approval if live_approval in (PENDING, REJECTED) else REJECTED
    state = {APPROVAL: approval}
    state.update({f"tag {ALIAS_TAG}{a}": str(version) for a in aliases if a != CHAMPION})
    return state


def plan_register(
    provider: SageMakerProvider, version: ModelVersionRecord
) -> Plan[ModelVersionRecord]:
    settings = provider.settings
    image = settings.need("serving_image", "register models (the mlcloud serving image URI)")
    group = group_name(version.name)
    archive, url = _model_url(provider, version)
    tags: list[Tag] = [
        {"Key": k, "Value": v}
        for k, v in {
            **settings.tags,
            "mlcloud:model": version.name,
            "mlcloud:version": str(version.version),
        }.items()
    ]
    metadata = {"mlcloud:ref": version.ref, SYNC_KEY: fingerprint(alias_state(0, [], PENDING))}
    if version.sha256:
        metadata[SHA_KEY] = version.sha256
    package = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": f"mlcloud model {version.ref}",
        "InferenceSpecification": {
            "Containers": [
                {"Image": image, "ModelDataUrl": url, "Environment": dict(SERVING_CONTRACT)}
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "ModelApprovalStatus": PENDING,
        "CustomerMetadataProperties": metadata,
        "Tags": tags,
        # AWS returns the same package for a retried request with the same token
        "ClientToken": _token(provider.name, version, url),
    }
    steps = [
        PlanStep(
            "sagemaker.CreateModelPackageGroup",
            {
                "ModelPackageGroupName": group,
                "ModelPackageGroupDescription": f"mlcloud model {version.name}",
                "Tags": [{"Key": "mlcloud:model", "Value": version.name}],
            },
        ),
        PlanStep("sagemaker.CreateModelPackage", package),
    ]
    key = url.removeprefix(f"s3://{settings.bucket}/") if archive else None
    context = RegisterContext(group, archive, settings.bucket, key, url)
    return provider.make_plan("register", version.ref, version, steps, context=context)


def _model_url(
    provider: SageMakerProvider, version: ModelVersionRecord
) -> tuple[SourceArchive | None, str]:
    """The model tarball: an s3:// model.tar.gz as is (a training job's output), a local model
    dir packed under its content hash (the key a deploy of it uses too)."""
    uri = version.uri
    if uri.startswith("s3://"):
        if not uri.endswith(".tar.gz"):
            raise SpecError(
                f"model {version.ref} ({uri}): SageMaker registers a model.tar.gz",
                hint="register the job's model.tar.gz, or a local model directory",
            )
        return None, uri
    if "://" in uri and not uri.startswith("file://"):
        raise UnsupportedFeature(
            f"registering a model from {uri.split('://', 1)[0]}://",
            provider.where,
            hint="use a local model dir or an s3:// model.tar.gz",
        )
    from mlcloud import modeldir
    from providers.common.staging import pack_source

    root = Path(uri.removeprefix("file://"))
    try:
        modeldir.verify(root)
    except (modeldir.ModelDirError, OSError) as e:
        raise SpecError(f"model {version.ref}: {e}") from None
    archive = pack_source(root, include_runtime=False)
    return archive, provider.settings.s3_uri("models", archive.sha256, "model.tar.gz")


def _token(profile: str, version: ModelVersionRecord, url: str) -> str:
    return hashlib.sha256(f"{profile}/{version.ref}/{url}".encode()).hexdigest()[:32]
