"""The local provider: jobs as supervised subprocesses (torchrun when distributed), endpoints as
``bentoml serve`` processes behind a stable front. Everything binds 127.0.0.1 by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]


def __getattr__(name: str) -> Any:
    # Lazy: the job supervisor and workers import modules of this package and should not pay
    # for the provider's imports.
    if name == "LocalProvider":
        from providers.local.provider import LocalProvider

        return LocalProvider
    raise AttributeError(name)
