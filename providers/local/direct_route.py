"""A local endpoint's predictions sent by the server's gateway straight to its model servers.

Why: through the front, a gateway prediction crossed two proxies (gateway, then front) where a
caller of the endpoint crosses one. Measured at concurrency 1 (iris model, 2-core machine): a
proxy that does nothing but forward (llhttp, one write each way, uvloop) still adds 0.15 ms to a
0.80 ms prediction — the hop's loopback round trip and two wake-ups, more than its CPU — so no
gateway in front of the front could reach 0.85x of calling the front. Sent straight to the
servers, the gateway takes the front's place instead of adding to it.

What the front did for these requests is done here with the front's own parts, so nothing
about the endpoint changes for whoever looks at it:

* **Routing**: the same ``upstreams.json`` read by the same :class:`Upstreams` (re-read when its
  ``stat`` changes, looked at every 50 ms), the same smooth weighted round-robin between
  versions: a 90/10 canary gets exactly one request in ten from the gateway too, and a
  deployer's switch or a rollout's new weights reach both at once.
* **Counting**: each answer is recorded in a :class:`Stats` of the front's kind, written to
  ``<state dir>/gateway-stats/<pid>.json`` at most once a second (``FLUSH_EVERY``) and when
  the gateway stops; the front adds these files to its ``/-/stats`` (``front_stats.GatewayCounts``),
  so ``endpoints show`` and a rollout run outside the server see every prediction the
  endpoint's servers answered.
* **Failures**: a server that takes no request (stopped by a switch, dead, restarting) counts
  as ``unreachable`` and the request goes to another server; with none reachable it goes
  through the front (``None`` from :meth:`DirectRoute.route`), which knows which servers are
  down, restarts them and answers 503 with ``Retry-After`` while it does. A deployer's drain
  waits for the front's requests in flight only; a gateway prediction still on its way to a
  server being stopped meets a refused or closed connection, which is this case: predictions
  are pure, so it is sent again, elsewhere.
* **Healing**: with no prediction crossing the front, none finds it dead; the gateway's
  periodic look at the endpoint (``target_ttl_s``) asks the provider for its status, which
  restarts a dead front.

Only the gateway of this machine can use it (the upstreams are the servers' 127.0.0.1 ports).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

from providers.local import procs
from providers.local.front_stats import GATEWAY_STATS_DIR, Stats
from providers.local.front_upstreams import UPSTREAMS_FILE, Upstreams

#: seconds between two writes of a gateway's counters (a rollout's check reads them at most
#: this late)
FLUSH_EVERY = 1.0
#: seconds a server found unreachable is left out before it is tried again (the front's
#: watchdog restarts a dead one on the same port)
RETRY_AFTER = 1.0

_routes: dict[Path, DirectRoute] = {}
_lock = threading.Lock()


class DirectRoute:
    """The front's routing and counting, in the gateway's process, for one endpoint."""

    def __init__(self, state_dir: Path, incarnation: float) -> None:
        self.incarnation = incarnation  # the record's created_at: a re-created endpoint's
        # generations start again, so its routing is read afresh (the counts carry on)
        self.upstreams = Upstreams(state_dir / UPSTREAMS_FILE)
        self.stats = Stats()
        self.file = state_dir / GATEWAY_STATS_DIR / f"{os.getpid()}.json"
        self.process = procs.identity(os.getpid())  # the front drops the file once it is gone
        self._dirty = False
        self._due: asyncio.TimerHandle | None = None  # the next write, once something changed
        self._retry_at = 0.0

    def route(self) -> tuple[str, str] | None:
        """``(server URL, version id)`` of the next prediction; ``None``: send it through the
        front (no routing published yet, or every server found unreachable)."""
        upstreams = self.upstreams
        if upstreams.down and time.monotonic() >= self._retry_at:
            upstreams.down.clear()
        return upstreams.route()

    def answered(self, url: str, status: int, ms: float) -> None:
        self.stats.of(url).record(status, ms)
        self._touch()

    def unreachable(self, url: str) -> None:
        """``url`` took no request: counted, and the routing re-read (a switch moved on)."""
        self.stats.of(url).unreachable += 1
        self.upstreams.down.add(url)  # for RETRY_AFTER s, or until the next generation
        self._retry_at = time.monotonic() + RETRY_AFTER
        self.upstreams.reload()
        self._touch()

    def _touch(self) -> None:
        """Counted: written within ``FLUSH_EVERY`` s (called on the gateway's event loop)."""
        self._dirty = True
        if self._due is None:
            self._due = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._write_due)

    def _write_due(self) -> None:
        self._due = None
        self.flush()

    def flush(self) -> None:
        """Write the counters (atomically) if they changed since the last write."""
        if not self._dirty:
            return
        self._dirty = False
        by_url = {url: c.to_dict() for url, c in self.stats.by_url.items()}
        data = {**self.process, "started": self.stats.started, "by_url": by_url}
        try:
            self.file.parent.mkdir(exist_ok=True)
            tmp = self.file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.file)
        except OSError:  # the endpoint was removed under us: nothing left to count for
            pass


def for_endpoint(state_dir: Path, incarnation: float) -> DirectRoute | None:
    """This process's route to the endpoint whose state is in ``state_dir`` (one per endpoint,
    kept across the gateway's target refreshes so the round-robin and the counts carry on);
    ``None`` when the endpoint publishes no routing (an endpoint of another machine's home).
    ``incarnation``: when the endpoint was created (undeployed and deployed again: another)."""
    if not (state_dir / UPSTREAMS_FILE).is_file():
        return None
    with _lock:
        route = _routes.get(state_dir)
        if route is None:
            route = _routes[state_dir] = DirectRoute(state_dir, incarnation)
        elif route.incarnation != incarnation:
            route.incarnation = incarnation
            route.upstreams = Upstreams(state_dir / UPSTREAMS_FILE)
        return route
