"""Commands of the `models` feature (being built: see the open issue)."""

from __future__ import annotations
