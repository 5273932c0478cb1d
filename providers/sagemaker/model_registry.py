"""The SageMaker Model Registry side of mlcloud's registry: create a version's model package,
mirror its aliases (approval status and tags), and read back what differs.

Planning is ``registry_plan.py``. Every function runs inside the provider's error mapping;
where an outcome decides what happens next (``Conflict``: the group exists; ``NotFound``: the
package is gone) the call is wrapped in ``provider.mapped()`` and the mlcloud class caught.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlcloud.errors import Conflict, NotFound, SpecError
from mlcloud.records import ModelVersionRecord, Plan
from providers.common import native_sync
from providers.sagemaker import s3
from providers.sagemaker.registry_plan import (
    ALIAS_TAG,
    APPROVAL,
    APPROVED,
    PENDING,
    SHA_KEY,
    SYNC_KEY,
    RegisterContext,
    alias_state,
)

if TYPE_CHECKING:
    from providers.sagemaker.provider import SageMakerProvider

MODEL_CONTENT_TYPE = "application/gzip"
WHERE = "SageMaker"


def register(provider: SageMakerProvider, plan: Plan[ModelVersionRecord]) -> dict[str, Any]:
    """Upload the tarball (if local), create the group unless it exists, create the package."""
    ctx = plan.context_as(RegisterContext)
    steps = {s.call: s.request for s in plan.steps}
    unknown = set(steps) - {"sagemaker.CreateModelPackageGroup", "sagemaker.CreateModelPackage"}
    if unknown:
        raise SpecError(f"plan {plan.id}: calls this provider does not make: {sorted(unknown)}")
    if ctx.archive is not None and ctx.bucket and ctx.model_key:
        s3.put_if_missing(provider, ctx.bucket, ctx.model_key, ctx.archive.data, MODEL_CONTENT_TYPE)
    sm = provider.clients.sagemaker
    try:
        with provider.mapped():
            sm.create_model_package_group(**steps["sagemaker.CreateModelPackageGroup"])
    except Conflict:
        pass  # one group per model name: later versions find it there
    arn = sm.create_model_package(**steps["sagemaker.CreateModelPackage"])["ModelPackageArn"]
    desc = sm.describe_model_package(ModelPackageName=arn)
    return {
        "model_package_group": ctx.group,
        "model_package_arn": arn,
        "model_package_version": desc.get("ModelPackageVersion"),
        "model_data_url": ctx.model_url,
    }


def _live(provider: SageMakerProvider, arn: str) -> tuple[dict[str, Any], dict[str, str]]:
    """DescribeModelPackage and the package's tags (NotFound when it is gone)."""
    sm = provider.clients.sagemaker
    desc: dict[str, Any] = sm.describe_model_package(ModelPackageName=arn)
    tags: dict[str, str] = {}
    token = None
    for _ in range(100):  # pages of 50 tags; a package has few
        page = sm.list_tags(ResourceArn=arn, **({"NextToken": token} if token else {}))
        tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
        token = page.get("NextToken")
        if not token:
            break
    return desc, tags


def _state(desc: dict[str, Any], tags: dict[str, str]) -> dict[str, str]:
    state = {APPROVAL: str(desc.get("ModelApprovalStatus"))}
    state.update({f"tag {k}": v for k, v in tags.items() if k.startswith(ALIAS_TAG)})
    return state


def sync_aliases(
    provider: SageMakerProvider, version: ModelVersionRecord, aliases: list[str]
) -> list[str]:
    """Approval status for ``champion``, tags for the other aliases; an entry changed outside
    mlcloud since its last sync is left untouched and its drift returned."""
    arn = version.details["native"]["model_package_arn"]
    try:
        with provider.mapped():
            desc, tags = _live(provider, arn)
    except NotFound:
        return [_gone(arn)]
    live = _state(desc, tags)
    meta = dict(desc.get("CustomerMetadataProperties") or {})
    expected = alias_state(version.version, aliases, live[APPROVAL])
    decision = native_sync.decide(live, meta.get(SYNC_KEY), expected, WHERE)
    if not decision.write:
        return decision.left
    sm = provider.clients.sagemaker
    add = [
        {"Key": field.removeprefix("tag "), "Value": value}
        for field, value in expected.items()
        if field.startswith("tag ") and live.get(field) != value
    ]
    drop = [f.removeprefix("tag ") for f in live if f.startswith("tag ") and f not in expected]
    if add:
        sm.add_tags(ResourceArn=arn, Tags=add)
    if drop:
        sm.delete_tags(ResourceArn=arn, TagKeys=drop)
    meta[SYNC_KEY] = native_sync.fingerprint(expected)
    # All of it each time: the whole metadata map (SageMaker merges it, moto replaces it) and
    # the approval status with its reason (moto clears what an update leaves out).
    sm.update_model_package(
        ModelPackageArn=arn,
        ModelApprovalStatus=expected[APPROVAL],
        ApprovalDescription=_why(version, expected[APPROVAL]),
        CustomerMetadataProperties=meta,
    )
    return []


def _why(version: ModelVersionRecord, approval: str) -> str:
    if approval == APPROVED:
        return f"mlcloud: champion is {version.ref}"
    if approval == PENDING:
        return f"mlcloud: {version.ref} has not been champion"
    return f"mlcloud: champion moved away from {version.ref}"


def native_drift(
    provider: SageMakerProvider, version: ModelVersionRecord, aliases: list[str]
) -> list[str]:
    """What the package shows that mlcloud's record does not (a read: nothing is changed)."""
    native = version.details["native"]
    arn = native["model_package_arn"]
    try:
        with provider.mapped():
            desc, tags = _live(provider, arn)
    except NotFound:
        return [_gone(arn)]
    lines = []
    containers = (desc.get("InferenceSpecification") or {}).get("Containers") or [{}]
    url, registered = containers[0].get("ModelDataUrl"), native.get("model_data_url")
    if url != registered:
        lines.append(f"model data: {WHERE} serves {url!r}, mlcloud registered {registered!r}")
    meta = desc.get("CustomerMetadataProperties") or {}
    if version.sha256 and meta.get(SHA_KEY) != version.sha256:
        lines.append(f"sha256: {WHERE} has {meta.get(SHA_KEY)!r}, mlcloud has {version.sha256!r}")
    live = _state(desc, tags)
    expected = alias_state(version.version, aliases, live[APPROVAL])
    return lines + native_sync.drift(live, meta.get(SYNC_KEY), expected, WHERE)


def _gone(arn: str) -> str:
    return f"model package {arn} no longer exists in {WHERE}"
