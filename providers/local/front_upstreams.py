"""The front's upstream list and its weighted routing between model versions.

``<state dir>/upstreams.json`` holds ``{"generation": n, "upstreams": [url, ...], "servers":
[...], "versions": {version id: {"weight": percent, "upstreams": [url, ...]}}}``. A plain
deploy leaves one version at 100; a canary deploy two (e.g. 90 / 10). The deployer replaces the
file atomically (write + ``os.replace``) and bumps ``generation`` on every change, weights
included; the front re-reads it when its ``stat`` changes.

Routing: versions are chosen by a precomputed smooth weighted round-robin schedule (nginx's
algorithm): a 90/10 split sends exactly one request in ten to the canary, evenly spread, with
no random draw per request. Within a version, replicas go round-robin. A version whose servers
are all down (being restarted) lends its turn to the others.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import reduce
from math import gcd
from pathlib import Path
from typing import Any

UPSTREAMS_FILE = "upstreams.json"
#: seconds between two looks at the file from the request path (the control path and a failed
#: attempt always look at once, so a deployer's confirmed switch is never stale)
RELOAD_EVERY = 0.05
log = logging.getLogger("mlcloud.front")


def write_upstreams(
    state_dir: Path,
    generation: int,
    upstreams: list[str],
    servers: list[dict[str, Any]] | None = None,
    versions: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Atomically publish a new upstream list (used by the deployer). ``servers``: the processes
    behind the URLs (``url``, ``pid``, ``create_time``, ``log``), which the front's watchdog
    restarts if they die. ``versions``: version id → ``{"weight", "upstreams"}``; by default
    one version, ``v<generation>``, with every upstream at 100."""
    target = state_dir / UPSTREAMS_FILE
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    split = versions or {f"v{generation}": {"weight": 100, "upstreams": upstreams}}
    data = {
        "generation": generation,
        "upstreams": upstreams,
        "servers": servers or [],
        "versions": {v: dict(s) for v, s in split.items()},
    }
    tmp.write_text(json.dumps(data))
    os.replace(tmp, target)


def schedule(weights: Mapping[str, int]) -> list[str]:
    """One cycle of smooth weighted round-robin: ``{"a": 90, "b": 10}`` → nine ``a`` and one
    ``b``, interleaved. Weight-0 versions get no slot."""
    live = {v: w for v, w in weights.items() if w > 0}
    if not live:
        return []
    divisor = reduce(gcd, live.values())
    share = {v: w // divisor for v, w in live.items()}
    total = sum(share.values())
    current = dict.fromkeys(share, 0)
    out = []
    for _ in range(total):
        for v, w in share.items():
            current[v] += w
        best = max(current, key=lambda v: current[v])
        current[best] -= total
        out.append(best)
    return out


class Upstreams:
    """The current upstream list, reloaded from the state file when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.generation = -1
        self.urls: list[str] = []
        self.servers: list[dict[str, Any]] = []
        self.versions: dict[str, list[str]] = {}  # version id -> its upstreams
        self.weights: dict[str, int] = {}
        self.version_of: dict[str, str] = {}  # url -> version id
        self.down: set[str] = set()  # being restarted by the watchdog: sent nothing
        self.inflight: dict[str, int] = {}
        self.on_switch: Callable[[], None] | None = None  # the watchdog adopts the new servers
        self._stamp: tuple[int, int] | None = None
        self._next_look = 0.0
        self._turns: list[str] = []
        self._turn = 0
        self._rr: dict[str, itertools.count[int]] = {}

    def reload(self) -> None:
        self._next_look = time.monotonic() + RELOAD_EVERY
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # a torn read cannot happen with os.replace; keep the old list regardless
        self._stamp = stamp
        urls = [str(u) for u in data.get("upstreams", [])]
        if urls and int(data.get("generation", 0)) != self.generation:
            log.info("switching to generation %s: %s", data.get("generation"), urls)
            self.generation = int(data["generation"])
            self.urls = urls
            self.servers = [s for s in data.get("servers") or [] if isinstance(s, dict)]
            self._take_versions(data.get("versions"), urls)
            self.down = set()
            if self.on_switch is not None:
                self.on_switch()

    def _take_versions(self, raw: Any, urls: list[str]) -> None:
        if not isinstance(raw, dict) or not raw:  # a file from before canaries: one version
            raw = {f"v{self.generation}": {"weight": 100, "upstreams": urls}}
        self.versions = {str(v): [str(u) for u in s.get("upstreams") or []] for v, s in raw.items()}
        self.weights = {str(v): int(s.get("weight") or 0) for v, s in raw.items()}
        self.version_of = {u: v for v, us in self.versions.items() for u in us}
        self._turns = schedule(self.weights) or list(self.versions)
        self._turn = 0
        self._rr = {v: itertools.count() for v in self.versions}

    def pick(self) -> str | None:
        """The next upstream that is up (looking at the file first); ``None`` if none is."""
        self.reload()
        chosen = self.route()
        return chosen[0] if chosen else None

    def route(self) -> tuple[str, str] | None:
        """``(url, version id)`` of the next request: the version whose turn it is, else any
        version with a server up; ``None`` if no server is up."""
        if time.monotonic() >= self._next_look:
            self.reload()
        turns = self._turns
        if not turns:
            return None
        version = turns[self._turn % len(turns)]
        self._turn += 1
        urls = self.versions[version]
        if self.down:
            urls = [u for u in urls if u not in self.down]
            if not urls:
                return self._any_up()
        return urls[next(self._rr[version]) % len(urls)], version

    def _any_up(self) -> tuple[str, str] | None:
        for version in sorted(self.versions, key=lambda v: -self.weights.get(v, 0)):
            for url in self.versions[version]:
                if url not in self.down:
                    return url, version
        return None
