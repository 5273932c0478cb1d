"""The ``mlcloud`` command line: the group and its core commands live in :mod:`mlcloud.cli.core`;
each feature's command group is its own module here, registered on import below.

Start-up is kept cheap: these modules import only click at module level (``mlcloud --help``
loads no pydantic, no cloud SDK); every operation goes through :mod:`mlcloud.api`.
"""

from __future__ import annotations

from mlcloud.cli import (  # noqa: F401 (they register their commands)
    endpoints,
    feedback,
    models,
    monitor,
    pipelines,
    rollouts,
    server,
    tracking,
)
from mlcloud.cli.core import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    cli,
    emit_json,
    emit_records,
    exit_code,
    main,
)
from mlcloud.cli.endpoints import _print_endpoint

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "_print_endpoint",
    "cli",
    "emit_json",
    "emit_records",
    "exit_code",
    "main",
]
