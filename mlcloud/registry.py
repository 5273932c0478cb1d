"""Provider registry: provider type → ``"module:Class"``, imported only when used.

Built-ins come from the table below; third parties add theirs through the ``mlcloud.providers``
entry-point group (``name = "pkg.module:Class"``). A third-party name that clashes with a built-in
is reported and ignored: built-ins are never hidden. Importing a provider whose extra is missing
raises ``ProviderUnavailable`` with the pip line (like fsspec's registry).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from mlcloud.errors import ProviderUnavailable

if TYPE_CHECKING:
    from mlcloud.config import Profile
    from mlcloud.provider import Provider
    from mlcloud.store import Store

ENTRY_POINT_GROUP = "mlcloud.providers"


@dataclass(frozen=True)
class ProviderEntry:
    type: str
    target: str  # "module:Class"
    requires: tuple[str, ...] = ()  # modules that must be importable
    install: str | None = None  # pip line when they are not
    origin: str = "built-in"  # or the distribution that registered it


BUILTIN: dict[str, ProviderEntry] = {
    e.type: e
    for e in (
        ProviderEntry("local", "providers.local:LocalProvider"),
        ProviderEntry(
            "sagemaker",
            "providers.sagemaker:SageMakerProvider",
            ("boto3",),
            "pip install 'mlcloud[aws]'",
        ),
        ProviderEntry(
            "vertex",
            "providers.vertex:VertexProvider",
            ("google.cloud.aiplatform_v1", "google.cloud.storage"),
            "pip install 'mlcloud[gcp]'",
        ),
        ProviderEntry(
            "azureml",
            "providers.azureml:AzureMLProvider",
            ("azure.ai.ml", "azure.identity"),
            "pip install 'mlcloud[azure]'",
        ),
    )
}


@cache
def _discover() -> tuple[dict[str, ProviderEntry], tuple[str, ...]]:
    from importlib.metadata import entry_points

    found: dict[str, ProviderEntry] = {}
    clashes: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        if ep.name in BUILTIN or ep.name in found:
            clashes.append(f"{ep.name!r} from {dist} ignored: the name is already taken")
            continue
        found[ep.name] = ProviderEntry(ep.name, ep.value, origin=dist)
    return found, tuple(clashes)


def refresh() -> None:
    """Forget discovered entry points (after installing a plugin in-process)."""
    _discover.cache_clear()


def entries() -> dict[str, ProviderEntry]:
    return {**_discover()[0], **BUILTIN}


def clashes() -> tuple[str, ...]:
    return _discover()[1]


def known_types() -> set[str]:
    return set(entries())


def entry(type_: str) -> ProviderEntry | None:
    """The entry for ``type_``. Built-ins win over plugins anyway, so they are answered without
    scanning every installed distribution's entry points (~100 ms on a CLI command)."""
    return BUILTIN.get(type_) or _discover()[0].get(type_)


def missing_module(entry: ProviderEntry) -> str | None:
    """The first of the provider's required modules that cannot be found (none is imported)."""
    module = entry.target.partition(":")[0]
    for name in (module, *entry.requires):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def is_installed(entry: ProviderEntry) -> bool:
    return missing_module(entry) is None


def require_installed(entry: ProviderEntry) -> None:
    """``ProviderUnavailable`` with the pip line when a required module is missing. Checked up
    front so a provider module can keep its SDK imports lazy."""
    name = missing_module(entry)
    if name is not None:
        raise ProviderUnavailable(entry.type, entry.install, cause=f"{name} is not installed")


def provider_class(type_: str) -> type[Provider]:
    from mlcloud.errors import ConfigError
    from mlcloud.provider import Provider

    found = entry(type_)
    if found is None:
        raise ConfigError(
            f"unknown provider type {type_!r}",
            hint="known: " + ", ".join(sorted(known_types())),
        )
    require_installed(found)
    module_name, _, attr = found.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ProviderUnavailable(type_, found.install, cause=str(e)) from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderUnavailable(type_, found.install, cause=f"{found.target} is not a Provider")
    return cls


def get_provider(profile: Profile, store: Store | None = None) -> Provider:
    """Build the provider for ``profile`` (imports its module now)."""
    from mlcloud.store import Store

    cls = provider_class(profile.type)
    return cls(profile, store if store is not None else Store.open())
