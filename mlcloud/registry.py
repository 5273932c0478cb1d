"""Lazy targets: provider types and serving entry points, as ``"module:attr"`` strings.

The core never imports ``providers`` or ``serving``; it names what it needs here and
:func:`load_target` imports it on first use (like fsspec's registry). That one function:

* refuses a ``providers`` / ``serving`` package that is not mlcloud's own (a user's package of
  the same name earlier on ``sys.path`` would silently be imported instead): ``ShadowedPackage``,
  checked before anything of it is imported;
* raises ``ProviderUnavailable`` with the pip line when a module the target needs is missing
  (checked up front, so a provider module can keep its SDK imports lazy).

Providers: built-ins come from the table below; third parties add theirs through the
``mlcloud.providers`` entry-point group (``name = "pkg.module:Class"``). A third-party name that
clashes with a built-in is reported and ignored: built-ins are never hidden. Whether a profile's
``type`` names a provider is checked here too (:func:`resolve_profile`), not in ``config``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud.errors import ConfigError, ProviderUnavailable, ShadowedPackage

if TYPE_CHECKING:
    from mlcloud.config import Config, Profile
    from mlcloud.provider import Provider
    from mlcloud.store import Store

ENTRY_POINT_GROUP = "mlcloud.providers"
#: The distribution's top-level import names besides ``mlcloud`` (they sit next to it).
OWN_PACKAGES = ("providers", "serving")
_DISTRIBUTION_ROOT = Path(__file__).resolve().parent.parent
SERVE_INSTALL = "pip install 'mlcloud[serve]'"


@dataclass(frozen=True)
class ProviderEntry:
    type: str
    target: str  # "module:Class"
    requires: tuple[str, ...] = ()  # modules that must be importable
    install: str | None = None  # pip line when they are not
    origin: str = "built-in"  # or the distribution that registered it


@dataclass(frozen=True)
class ServingTarget:
    """Something of ``serving/`` the core calls, imported on use (needs the ``serve`` extra)."""

    target: str  # "serving.module:attr"
    requires: tuple[str, ...] = ("bentoml",)
    install: str = SERVE_INSTALL


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
        ProviderEntry("ray", "providers.ray:RayProvider", ("ray",), "pip install 'mlcloud[ray]'"),
    )
}

#: ``serving.image.build_image(model_dir, tag) -> ImageResult`` (``mlcloud image build``)
BUILD_IMAGE = ServingTarget("serving.image:build_image")


# ---- loading a target: the one place the core imports providers/ and serving/ ---------------
def shadowing(package: str) -> Path | None:
    """Where ``package`` (one of :data:`OWN_PACKAGES`) would be imported from, when that is not
    mlcloud's own copy next to ``mlcloud/``; None when it is ours or absent.

    Only looks: ``find_spec`` of a top-level name imports nothing, so a shadowing package's
    code never runs. (An already imported package is judged by its ``__spec__``.)
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    ours = (_DISTRIBUTION_ROOT / package).resolve()
    if spec.origin is not None and spec.has_location:
        found = Path(spec.origin).resolve()
        where = found.parent if found.name == "__init__.py" else found
    else:  # a namespace package: only directories, and none of them is ours
        locations = [Path(p).resolve() for p in spec.submodule_search_locations or ()]
        if ours in locations:
            return None
        where = locations[0] if locations else Path(package)
    return None if where == ours else where


def check_not_shadowed(module: str) -> None:
    """``ShadowedPackage`` when ``module`` lives in a ``providers`` / ``serving`` package that is
    not the one installed with mlcloud (a user's own package earlier on ``sys.path``)."""
    package = module.partition(".")[0]
    if package not in OWN_PACKAGES:
        return
    where = shadowing(package)
    if where is not None:
        raise ShadowedPackage(
            f"the import name {package!r} is taken by {where}, not mlcloud's own "
            f"{_DISTRIBUTION_ROOT / package}",
            hint=f"rename your {where.name!r} package or module, or run from a directory "
            f"that does not hold it ({package!r} is a top-level package of mlcloud)",
        )


def _first_missing(modules: tuple[str, ...]) -> str | None:
    """The first of ``modules`` that cannot be found (none is imported, except the parent
    packages of dotted names)."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def load_target(
    target: str, *, name: str, requires: tuple[str, ...] = (), install: str | None = None
) -> object:
    """Import ``"module:attr"`` and return the attribute.

    ``name`` is how errors call the target (a provider type, ``serving``); ``requires`` the
    modules it needs, ``install`` the pip line that brings them.
    """
    module_name, _, attr = target.partition(":")
    check_not_shadowed(module_name)
    missing = _first_missing((module_name, *requires))
    if missing is not None:
        raise ProviderUnavailable(name, install, cause=f"{missing} is not installed")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ProviderUnavailable(name, install, cause=str(e)) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ProviderUnavailable(name, install, cause=f"{target} does not exist") from None


def serving_target(target: ServingTarget) -> object:
    """Load a :class:`ServingTarget` (``ProviderUnavailable`` names the ``serve`` extra)."""
    return load_target(
        target.target, name="serving", requires=target.requires, install=target.install
    )


# ---- providers -------------------------------------------------------------------------------
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
    return _first_missing((entry.target.partition(":")[0], *entry.requires))


def is_installed(entry: ProviderEntry) -> bool:
    """Whether the provider's modules are all there (and its package is not shadowed)."""
    package = entry.target.partition(":")[0].partition(".")[0]
    if package in OWN_PACKAGES and shadowing(package) is not None:
        return False
    return missing_module(entry) is None


def require_installed(entry: ProviderEntry) -> None:
    """``ProviderUnavailable`` with the pip line when a required module is missing."""
    check_not_shadowed(entry.target.partition(":")[0])
    name = missing_module(entry)
    if name is not None:
        raise ProviderUnavailable(entry.type, entry.install, cause=f"{name} is not installed")


def _unknown_type_hint() -> str:
    return "one of: " + ", ".join(sorted(known_types()))


def check_profiles(config: Config) -> None:
    """``ConfigError`` for the first profile whose ``type`` no provider has, naming its file."""
    for profile in config.profiles.values():
        if entry(profile.type) is None:
            raise ConfigError(
                f"{profile.source}: profile {profile.name!r} has unknown type {profile.type!r}",
                hint=_unknown_type_hint(),
            )


def resolve_profile(config: Config, name: str | None = None) -> Profile:
    """The profile ``name`` selects (see ``Config.resolve``), every profile's type checked.

    A name that is neither a profile nor a provider type is a ``ConfigError`` listing both.
    """
    check_profiles(config)
    profile = config.resolve(name)
    if entry(profile.type) is None:  # only a bare name can get here: the profiles are checked
        raise ConfigError(
            f"unknown provider or profile {profile.name!r}",
            hint="profiles: "
            + (", ".join(sorted(config.profiles)) or "(none)")
            + "; provider types: "
            + ", ".join(sorted(known_types())),
        )
    return profile


def provider_class(type_: str) -> type[Provider[Any]]:
    from mlcloud.provider import Provider

    found = entry(type_)
    if found is None:
        raise ConfigError(f"unknown provider type {type_!r}", hint=_unknown_type_hint())
    cls = load_target(found.target, name=type_, requires=found.requires, install=found.install)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ProviderUnavailable(type_, found.install, cause=f"{found.target} is not a Provider")
    return cls


def get_provider(profile: Profile, store: Store | None = None) -> Provider[Any]:
    """Build the provider for ``profile`` (imports its module now)."""
    from mlcloud.store import Store

    cls = provider_class(profile.type)
    return cls(profile, store if store is not None else Store.open())
