"""The local provider: jobs as supervised subprocesses (torchrun when distributed), endpoints as
``bentoml serve`` processes behind a stable front. Everything binds 127.0.0.1 by default."""

from providers.local.provider import LocalProvider

__all__ = ["LocalProvider"]
