"""Run a test's scenario in a fresh, single-threaded interpreter.

The local provider forks its job supervisor only from a single-threaded caller. Whether the
pytest process is single-threaded depends on which session-wide servers earlier tests left
running in it as threads (moto, the Vertex and GCS fakes), so a test of that fast path runs its
scenario in a new interpreter ("spawn": nothing inherited but the environment and sys.path).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def in_fresh_interpreter(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a new interpreter (``fn`` importable by name; args and result picklable);
    an exception it raises is raised here."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
