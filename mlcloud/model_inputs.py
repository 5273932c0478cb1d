"""What a re-deploy must not change: the inputs the endpoint's callers send (issue 10, item 14).

An update of an endpoint is refused when the new model takes other inputs than the serving one
(``api.deploy``, a following endpoint's redeploy, a canary). Each side's signature is read where
it is kept: a registry ref (``NAME@ALIAS``, ``NAME:3``) from its version record, a local model dir
from its ``mlcloud-model.yaml``, a cloud URI (``s3://``, ``gs://``, ``azureml://``) through the
provider that stores it (``Provider.read_model_manifest``, with its own credentials). A side that
cannot be read leaves the update unchecked, and a warning says so: refusing would block every
re-deploy from a bucket this machine cannot read.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mlcloud import model_registry, modeldir
from mlcloud.errors import MlcloudError, MlcloudWarning, ModelError, SpecError
from mlcloud.provider import Provider
from mlcloud.store import Store

Inputs = tuple[str | None, Any]  # (framework, signature["inputs"] or None)


class UncheckedInputs(MlcloudWarning):
    """A re-deploy's input signature could not be compared (a side could not be read)."""


class _Unreadable(Exception):
    """Why one side's signature is not known."""


def check_same_inputs(
    name: str,
    old_model: str | None,
    new_model: str,
    prov: Provider[Any] | None = None,
    store: Store | None = None,
) -> None:
    """Refuse an update that changes what the endpoint takes: both signatures known and
    different, or a signature unknown and the framework changed (iris → TorchScript).
    ``prov`` reads cloud URIs; ``store`` (default: ``prov``'s) resolves registry refs."""
    if not old_model:
        return  # nothing was serving: nothing to keep
    store = store if store is not None else (prov.store if prov is not None else None)
    try:
        old = inputs_of(old_model, prov, store)
        new = inputs_of(new_model, prov, store)
    except _Unreadable as why:
        warnings.warn(
            UncheckedInputs(
                f"endpoint {name!r}: the input signature was not checked ({why}); its callers "
                "may break if the new model takes other inputs"
            ),
            stacklevel=3,
        )
        return
    (old_fw, old_in), (new_fw, new_in) = old, new
    both_known = old_in is not None and new_in is not None
    if (old_in != new_in) if both_known else (old_fw != new_fw):
        raise SpecError(
            f"endpoint {name!r} serves a {old_fw} model taking {old_in or 'unknown inputs'}; "
            f"the new {new_fw} model takes {new_in or 'unknown inputs'}: its callers would break",
            hint="deploy it under a new --name, or pass --force to replace it anyway",
        )


def inputs_of(model: str, prov: Provider[Any] | None, store: Store | None) -> Inputs:
    """(framework, signature inputs) of a registry ref, a local model dir or a cloud URI;
    raises ``_Unreadable`` saying why when it cannot be known here."""
    cloud = "://" in model and not model.startswith("file://")
    local = Path(model.removeprefix("file://"))
    # a dir named like a ref is a dir (as ``api.resolve_model`` reads it)
    ref = not cloud and model_registry.looks_like_ref(model) and not local.is_dir()
    if ref and store is not None:
        return _version_inputs(model, prov, store)
    if cloud and prov is None:
        raise _Unreadable(f"{model} is read only through its provider")
    # a URI, or a name no local path has: its provider may know it (Azure ML records its
    # endpoints' models as asset ids, ``/subscriptions/…/models/N/versions/V``)
    if prov is not None and (cloud or not local.exists()):
        try:
            manifest = prov.read_model_manifest(model)
        except MlcloudError as e:
            raise _Unreadable(f"{model} could not be read: {e}") from None
        if manifest is not None:
            return _manifest_inputs(manifest)
        if cloud:
            raise _Unreadable(f"{prov.name} cannot read the model manifest at {model}")
    try:
        return _manifest_inputs(modeldir.read_manifest(local))
    except (OSError, ModelError) as e:
        raise _Unreadable(f"{model}: {e}") from None


def _version_inputs(ref: str, prov: Provider[Any] | None, store: Store) -> Inputs:
    try:
        version = model_registry.resolve(store, ref)
    except MlcloudError as e:
        raise _Unreadable(f"{ref}: {e}") from None
    signature = version.details.get("signature")
    if signature is None and version.framework is None:  # a URI registered unread: read it
        return inputs_of(version.uri, prov, store)
    inputs = signature.get("inputs") if isinstance(signature, dict) else None
    return version.framework, inputs


def _manifest_inputs(manifest: dict[str, Any]) -> Inputs:
    signature = manifest.get("signature")
    inputs = signature.get("inputs") if isinstance(signature, dict) else None
    framework = manifest.get("framework")
    return (str(framework) if framework is not None else None), inputs
