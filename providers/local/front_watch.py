"""The front's watchdog: it restarts a dead server of the generation in force.

Why the front: it is the one long-lived process of an endpoint, it already follows the
generation in force (``upstreams.json``), it learns first when a server stops answering, and it
holds no model code (a model can crash or exhaust memory in a server, never in the front). The
front in turn is restarted by whatever mlcloud command next looks at the endpoint
(``endpoints.status``: ``endpoints show``, ``predict``, the provider's listing), since a process
cannot restart itself once it is gone.

How a server is restarted, each tick (``TICK`` s, sooner when the proxy found one refusing):

* A server whose arbiter is gone (``kill -9``) leaves BentoML workers behind that still hold the
  port: every process tagged with exactly that server's ``MLCLOUD_ENDPOINT_TAG`` is stopped first.
* It is started again with exactly the argv, environment and working directory it ran with, read
  from the kernel (``/proc/<pid>/…``) while it ran, so no environment (which may hold a user's
  secrets) is ever written to disk for this. Consequence: a server that died while no front was
  watching it cannot be restarted this way; it shows as ``lost`` and needs a redeploy.
* The same port, so the upstream list does not change; the front sends it nothing until its
  ``/readyz`` answers 200 (another replica takes the traffic, or callers get a 503 with
  ``Retry-After``).
* Backoff: the first restart is immediate, then 1, 2, 4 … 60 s between tries; a server that
  stayed up ``STABLE_AFTER`` s starts over. A server not ready after ``READY_TIMEOUT`` s is stopped
  and counts as a failure. Every restart is counted; the counts are published in
  ``health.json`` (``HEALTH_FILE``), which ``endpoints show`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from providers.local import endpoint_procs as procs
from providers.local import front_log

if TYPE_CHECKING:
    from providers.local.front import Upstreams

log = logging.getLogger("mlcloud.front.watch")

HEALTH_FILE = "health.json"
TICK = 1.0
BACKOFF_BASE, BACKOFF_CAP = 1.0, 60.0
STABLE_AFTER = 60.0
READY_TIMEOUT = 300.0
UP, STARTING, WAITING, LOST = "up", "restarting", "waiting", "lost"


def backoff(failures: int) -> float:
    """Seconds before restart number ``failures + 1`` of a run of failures: 0, 1, 2, 4 … 60."""
    return 0.0 if failures <= 0 else min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))


@dataclass
class Launch:
    """How a server was started, as the kernel reports it."""

    argv: list[str]
    env: dict[str, str]
    cwd: str

    @classmethod
    def of(cls, ident: procs.Ident) -> Launch | None:
        import psutil

        try:
            proc = psutil.Process(int(ident["pid"]))
            if ident.get("create_time") not in (None, proc.create_time()):
                return None
            return cls(proc.cmdline(), proc.environ(), proc.cwd())
        except (psutil.Error, KeyError, ValueError):
            return None


@dataclass
class Watched:
    """One server of the generation in force."""

    url: str
    ident: procs.Ident
    restarts: int = 0
    failures: int = 0  # consecutive: the backoff's exponent
    state: str = UP
    next_try: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_restart: float | None = None  # wall clock, for people
    last_error: str | None = None
    launch: Launch | None = None

    def public(self) -> dict[str, Any]:
        return {
            **self.ident,
            "state": self.state,
            "restarts": self.restarts,
            "last_restart": self.last_restart,
            "last_error": self.last_error,
        }


class Watchdog:
    def __init__(self, state_dir: Path, upstreams: Upstreams) -> None:
        self.state_dir = state_dir
        self.upstreams = upstreams
        self.generation: int | None = None
        self.watched: dict[str, Watched] = {}
        self.wake = asyncio.Event()
        self._published = ""
        # Adopt new servers the moment the front switches to them (the deployer's confirmation
        # of the switch triggers it), not at the next tick: a server that died in between
        # could not be restarted, its launch never seen.
        upstreams.on_switch = self._adopt

    async def run(self) -> None:
        self._sync()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK)
            self.wake.clear()
            try:
                await self.tick()
            except Exception:  # the watchdog must outlive any one bad tick
                log.exception("watchdog tick failed")

    def poke(self) -> None:
        """Look now (the proxy could not reach a server)."""
        self.wake.set()

    async def tick(self) -> None:
        self._sync()
        for watched in list(self.watched.values()):
            await self._check(watched)
            front_log.copy_truncate(Path(watched.ident.get("log") or os.devnull))
        self._publish()

    # ---- the generation in force ---------------------------------------------------------
    def _sync(self) -> None:
        self.upstreams.reload()
        if self.upstreams.generation != self.generation:
            self._adopt()

    def _adopt(self) -> None:
        """Watch the servers of the generation in force; read how each was started."""
        self.generation = self.upstreams.generation
        known = self._previous_health()
        self.watched = {}
        for server in self.upstreams.servers:
            url = str(server.get("url"))
            # A restarted front keeps the counts and follows the pid its predecessor started.
            before = known.get(url) or {}
            source = before or server
            ident: procs.Ident = {
                "pid": int(source["pid"]),
                "create_time": source.get("create_time"),
                "log": str(source.get("log") or ""),
            }
            watched = Watched(url, ident, restarts=int(before.get("restarts") or 0))
            watched.last_restart = before.get("last_restart")
            watched.launch = Launch.of(watched.ident) if procs.alive(watched.ident) else None
            self.watched[url] = watched

    def _previous_health(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.state_dir / HEALTH_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if data.get("generation") != self.generation:
            return {}
        return dict(data.get("servers") or {})

    # ---- one server ----------------------------------------------------------------------
    async def _check(self, w: Watched) -> None:
        now = time.monotonic()
        alive = procs.alive(w.ident)
        if w.state == STARTING:
            if not alive:
                self._failed(w, "exited while starting", now)
            elif await asyncio.to_thread(_ready, w.url):
                log.info("server %s is ready again (restart %d)", w.url, w.restarts)
                w.state, w.started = UP, now
                self.upstreams.down.discard(w.url)
            elif now - w.started > READY_TIMEOUT:
                await asyncio.to_thread(procs.stop, [w.ident], None, 5.0)
                self._failed(w, f"not ready after {READY_TIMEOUT:.0f}s", now)
            return
        if alive:
            if w.state != UP:
                w.state = UP
            if w.launch is None:
                w.launch = Launch.of(w.ident)
            if w.failures and now - w.started > STABLE_AFTER:
                w.failures = 0
            return
        if w.state == UP:
            log.warning("server %s (pid %s) is gone", w.url, w.ident["pid"])
            self.upstreams.down.add(w.url)
            self._failed(w, "exited", now)
        self.upstreams.reload()  # a switch adopts the new servers: never restart an old one
        if w.state == WAITING and now >= w.next_try and self.watched.get(w.url) is w:
            await asyncio.to_thread(self._restart, w)

    def _failed(self, w: Watched, why: str, now: float) -> None:
        procs.reap(w.ident)
        w.last_error = why
        if w.launch is None:
            w.state = LOST
            w.last_error = f"{why}; it cannot be restarted (it was never seen running)"
            return
        w.state = WAITING
        w.next_try = now + backoff(w.failures)

    def _restart(self, w: Watched) -> None:
        """Stop what the dead server left (workers holding its port), start it again."""
        assert w.launch is not None
        launch = w.launch
        tag = launch.env.get(procs.ENV_TAG)
        with contextlib.suppress(Exception):
            procs.stop([w.ident], tag, grace=2.0, exact=True)
        log.warning("restarting server %s (restart %d)", w.url, w.restarts + 1)
        try:
            w.ident = procs.spawn(
                launch.argv, launch.env, launch.cwd, Path(w.ident["log"]), inherit=False
            )
        except OSError as exc:
            w.last_error = f"could not start: {exc}"
            w.failures += 1
            w.next_try = time.monotonic() + backoff(w.failures)
            return
        w.restarts += 1
        w.failures += 1
        w.state, w.started = STARTING, time.monotonic()
        w.last_restart = time.time()

    # ---- published for ``endpoints show`` -------------------------------------------------
    def _publish(self) -> None:
        data = {
            "generation": self.generation,
            "front_pid": os.getpid(),
            "servers": {url: w.public() for url, w in self.watched.items()},
        }
        text = json.dumps(data, sort_keys=True)
        if text == self._published:
            return
        target = self.state_dir / HEALTH_FILE
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with contextlib.suppress(OSError):
            tmp.write_text(text)
            os.replace(tmp, target)
            self._published = text


def read_health(state_dir: Path) -> dict[str, Any]:
    """What the front last published (``{}`` when nothing was)."""
    try:
        data = json.loads((state_dir / HEALTH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _ready(url: str) -> bool:
    from providers.local.clients import HttpClient

    try:
        return HttpClient().request("GET", url + "/readyz", timeout=1.0)[0] == 200
    except OSError:
        return False
