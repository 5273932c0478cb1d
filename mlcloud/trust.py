"""Trust: may a model run its own code when it is loaded? (README, Security)

The core's decision, made once when a deployment is built and carried to every provider's
serving container in the deployment (``Deployment.trust`` → ``MLCLOUD_TRUSTED_MODEL``), where the
loader enforces it. Re-exported by :mod:`mlcloud.api`.
"""

from __future__ import annotations

from pathlib import Path

from mlcloud import model_registry, modeldir
from mlcloud.records import JobState
from mlcloud.specs import TrustGrant
from mlcloud.store import Store


def decide_trust(
    uri: str, source_job: str | None, store: Store, trust_code: bool
) -> tuple[TrustGrant | None, str | None]:
    """The core's decision, carried to every provider's serving container in the deployment
    (``Deployment.trust`` → ``MLCLOUD_TRUSTED_MODEL``) and enforced by the loader there.

    A model that runs code when loaded is trusted when a job mlcloud ran produced exactly it
    (its digest is the one recorded when the job finished; a model dir given by path is
    matched to its job by digest), when the registry vouches for it, or with ``trust_code``;
    else ``ModelError`` with the hint. Returns the grant (``None``: none is needed or, for a
    remote model that cannot be read here, none was given) and the source job."""
    if "://" in uri and not uri.startswith("file://"):
        return _remote_trust(uri, source_job, store, trust_code), source_job
    root = Path(uri.removeprefix("file://"))
    if not (root / modeldir.MANIFEST).is_file():
        return None, source_job  # not a model dir: the provider's plan says so
    manifest = modeldir.verify(root)  # a tampered model is refused here, by name
    reason = modeldir.runs_code(manifest)
    if reason is None:
        return None, source_job
    digest = modeldir.manifest_digest(manifest)
    job = _job_with_model(store, source_job, digest)
    if job is not None:
        return TrustGrant(by="job", job=job, digest=digest), job
    registered = _registry_trust(uri, digest, store)
    if registered is not None:
        return registered, source_job
    if trust_code:
        return TrustGrant(by="trust-code", digest=digest), source_job
    message = _untrusted_message(root, reason, source_job, store)
    raise modeldir.ModelDirError(message, hint=modeldir.UNTRUSTED_HINT)


def _remote_trust(
    uri: str, source_job: str | None, store: Store, trust_code: bool
) -> TrustGrant | None:
    """A model in a bucket cannot be read here: a job's own output is trusted by provenance
    (pinned to the digest its provider recorded, when it did), else only with trust_code."""
    if source_job is not None:
        recorded = store.get_job(source_job).outputs.get("model_sha256")
        return TrustGrant(by="job", job=source_job, digest=recorded or None)
    registered = _registry_trust(uri, None, store)
    if registered is not None:
        return registered
    return TrustGrant(by="trust-code") if trust_code else None


def _job_with_model(store: Store, source_job: str | None, digest: str) -> str | None:
    """The succeeded job that recorded exactly this model (by its digest), if any."""
    if source_job is not None:
        record = store.get_job(source_job)
        return source_job if record.outputs.get("model_sha256") == digest else None
    for record in store.list_jobs(limit=10_000):
        if record.state is JobState.SUCCEEDED and record.outputs.get("model_sha256") == digest:
            return record.id
    return None


def _registry_trust(uri: str, digest: str | None, store: Store) -> TrustGrant | None:
    """A registered version vouches for its content: same digest (a local model), or, for a
    remote model, same URI with a recorded digest, which the grant pins."""
    version = model_registry.trusted_version(store, uri, digest)
    if version is None:
        return None
    return TrustGrant(by="registry", job=version.source_job, digest=digest or version.sha256)


def _untrusted_message(root: Path, reason: str, source_job: str | None, store: Store) -> str:
    if source_job is None:
        return (
            f"{root} runs code when loaded ({reason}), and no job mlcloud ran produced it: "
            "refusing to deploy it"
        )
    recorded = store.get_job(source_job).outputs.get("model_sha256")
    if recorded:
        return (
            f"the model of job {source_job} runs code when loaded ({reason}) and changed "
            f"after the job finished (digest now {modeldir.digest(root)[:12]}…, recorded "
            f"{recorded[:12]}…): refusing to deploy it"
        )
    return (
        f"the model of job {source_job} runs code when loaded ({reason}), and no digest was "
        "recorded when the job finished: refusing to deploy it"
    )
