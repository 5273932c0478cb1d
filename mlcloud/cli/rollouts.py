"""Commands of the `rollouts` feature (being built: see the open issue)."""

from __future__ import annotations
