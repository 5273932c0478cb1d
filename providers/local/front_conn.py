"""The front's connections: a cap, and deadlines for the idle, header and body phases.

Measured before (issue 16): a slowloris connection (headers sent one byte a second) or a silent
one was held for as long as the client liked (40 s of 40 tried), and 600 of them exhausted a
front with 256 descriptors: no legitimate request got through until they closed.

Each accepted connection is one ``FrontConn`` (``front_http.py``, the front's HTTP/1.1 server),
which goes through phases, each with a deadline that one sweep (every ``SWEEP`` s) enforces:

``idle``    connected, or a response was sent, and no byte of the next request has come:
            closed after ``idle_timeout`` (this also covers a request head that never starts);
``head``    the first byte of a request came, its head is not complete: closed with a 408
            after ``header_timeout`` — trickling bytes does not extend it;
``body``    the head is in, the body is being read: a 408 after ``body_timeout``;
``busy``    the request is at an upstream, until its response has been written.

**The cap.** At most ``max_connections`` connections are open (also bounded by the descriptor
limit: each busy connection uses a second descriptor upstream). A new connection beyond it
evicts the oldest connection that is not ``busy`` — an idle keep-alive, or a client that has not
finished sending: a slow client cannot hold a slot that a fast one needs. Only when every slot
has a request at an upstream is the new connection answered ``503`` at once and closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("mlcloud.front")

IDLE, HEAD, BODY, BUSY = "idle", "head", "body", "busy"
#: the listen backlog, which is also how many connections asyncio accepts in one pass (each
#: holds a descriptor until the cap has closed it or another)
BACKLOG = 64
#: descriptors kept for everything but client connections: an accept burst, the listen socket,
#: logs, the watchdog's probes
FD_RESERVE = BACKLOG + 64
#: seconds a refused connection is read (and dropped) after its 503, so the client sees it
LINGER = 1.0
#: seconds between two looks at the connections' deadlines (their resolution)
SWEEP = 0.25


@dataclass(frozen=True)
class Limits:
    max_connections: int = 1000
    idle_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def effective_cap(self) -> int:
        """``max_connections``, lowered to what the descriptor limit can carry: each connection
        may need a client and an upstream descriptor."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, (soft - FD_RESERVE) // 2))


def raise_fd_limit(ceiling: int = 1 << 16) -> None:
    """Lift this process's soft descriptor limit towards its hard limit (as Go's runtime does):
    a desktop's soft 1024 would otherwise cap a front at a few hundred connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        # On failure the soft limit stays; effective_cap() follows whatever it is.
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _raw_response(status: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


BUSY_503 = _raw_response(
    "503 Service Unavailable",
    "the endpoint has too many connections with requests in flight; retry later",
    "Retry-After: 1\r\n",
)
HEAD_408 = _raw_response("408 Request Timeout", "the request head was not complete in time")
EVICTED_503 = _raw_response(
    "503 Service Unavailable",
    "connection closed: the endpoint is at its connection limit and this request was incomplete",
    "Retry-After: 1\r\n",
)


class Guarded(Protocol):
    """What the cap needs of a connection (``front_http.FrontConn``)."""

    phase: str
    deadline: float  # loop time at which its phase's deadline passes

    def close(self, last_words: bytes = b"") -> None: ...

    def expire(self) -> None: ...


class Connections:
    """The open connections, oldest first, and the numbers the control path reports."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.cap = limits.effective_cap()
        self.open: dict[Guarded, None] = {}  # insertion-ordered: oldest first
        self.counts = {"accepted": 0, "evicted": 0, "rejected": 0, "head_timeouts": 0}
        self.lingering = 0  # refused connections still being read to their end

    def admit(self, conn: Guarded) -> bool:
        """Room for ``conn``: evicts the oldest connection not at an upstream if full."""
        self.counts["accepted"] += 1
        if len(self.open) >= self.cap:
            victim = next((c for c in self.open if c.phase != BUSY), None)
            if victim is None:
                self.counts["rejected"] += 1
                return False
            self.counts["evicted"] += 1
            victim.close(EVICTED_503 if victim.phase in (HEAD, BODY) else b"")
        self.open[conn] = None
        return True

    def forget(self, conn: Guarded) -> None:
        self.open.pop(conn, None)

    def expire(self, now: float) -> None:
        """Close what is past its phase's deadline (called every ``SWEEP`` s: one timer for
        all connections, not one per request)."""
        for conn in [c for c in self.open if c.deadline <= now]:
            conn.expire()

    def snapshot(self) -> dict[str, int]:
        phases = {IDLE: 0, HEAD: 0, BODY: 0, BUSY: 0}
        for conn in self.open:
            phases[conn.phase] += 1
        return {"open": len(self.open), "cap": self.cap, **phases, **self.counts}
