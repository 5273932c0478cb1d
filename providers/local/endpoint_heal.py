"""Self-healing of a local endpoint, as the CLI sees it (``endpoints.status``).

Who restarts what, and why there:

* **Servers** are restarted by the front (``front_watch.py``): it runs all the time, so a server
  killed at night is back in seconds without anyone looking, and it publishes what it did in
  ``health.json``. Read here, that becomes the record: each server's current pid, its state
  (``up``, ``restarting``, ``lost``) and its restart count.
* **The front** is restarted here, by whatever command looks at the endpoint next (``endpoints
  show``, ``predict`` when the front does not answer, the provider's listing): a process cannot
  restart itself, and a watchdog for the watchdog would only move the question. The front runs
  no model code, so it is the process least likely to die. The restart takes the endpoint's
  lock (never beside a deploy), waits out a backoff (0, 1, 2, 4 … 60 s after consecutive
  restarts), and gets the same bearer token as the deploy did (checked by fingerprint).

``details.restarts`` is the total (front and servers); each server and the front carry their own.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlcloud.records import EndpointRecord, EndpointState
from providers.local import endpoint_procs as procs
from providers.local.endpoint_net import (
    TokenError,
    api_token,
    check_token,
    connect_host,
    http_url,
    token_fingerprint,
)
from providers.local.endpoint_plan import endpoint_dir
from providers.local.front import CONTROL_PATH
from providers.local.front_watch import LOST, STABLE_AFTER, UP, backoff, read_health

if TYPE_CHECKING:
    from providers.local.provider import LocalProvider

FRONT_ANSWER_TIMEOUT = 15.0  # seconds a restarted front gets to answer on its control path


def observe(provider: LocalProvider, record: EndpointRecord) -> EndpointRecord:
    """READY if the front runs and at least one server serves; FAILED otherwise. Restarts a
    dead front; the message names whatever is not up. Written back only when it changed."""
    before = _snapshot(record)
    details = record.details
    front_problem = heal_front(provider, record)
    state_dir = endpoint_dir(provider.store.home, record.name)
    servers = _servers_now(details["servers"], state_dir, front_problem is None)
    details["servers"] = servers
    details["restarts"] = int(details["front"].get("restarts") or 0) + sum(
        int(s.get("restarts") or 0) for s in servers
    )
    problems = [front_problem] if front_problem else []
    problems += [_describe(s) for s in servers if s["state"] != UP]
    serving = front_problem is None and any(s["state"] == UP for s in servers)
    record.state = EndpointState.READY if serving else EndpointState.FAILED
    if problems:
        record.message = "; ".join(problems)
        details["observed"] = True
    elif details.pop("observed", None):
        record.message = None  # what we reported is over (other messages are kept)
    if _snapshot(record) != before:
        record = provider.store.put_endpoint(record)
    return record


def _snapshot(record: EndpointRecord) -> str:
    return json.dumps([record.state, record.message, record.details], sort_keys=True, default=str)


def current_servers(state_dir: Path, servers: list[Any]) -> list[Any]:
    """The recorded servers as they run now (the front may have restarted some)."""
    return [_overlay(server, seen)[0] for server, seen in _with_health(servers, state_dir)]


def _with_health(
    servers: list[dict[str, Any]], state_dir: Path
) -> list[tuple[dict[str, Any], Any]]:
    """Each server with what the front's watchdog published about it, if it watches exactly
    these servers."""
    seen_by_url = read_health(state_dir).get("servers") or {}
    urls = [http_url("127.0.0.1", int(s["port"])) for s in servers]
    current = set(seen_by_url) == set(urls)
    return [
        (server, seen_by_url.get(url) if current else None)
        for url, server in zip(urls, servers, strict=True)
    ]


def _overlay(server: dict[str, Any], seen: Any) -> tuple[dict[str, Any], str | None]:
    server = dict(server)
    if not isinstance(seen, dict):
        return server, None
    for key in ("pid", "create_time", "restarts", "last_restart", "last_error"):
        if key in seen:
            server[key] = seen[key]
    return server, seen.get("state")


def _servers_now(
    servers: list[dict[str, Any]], state_dir: Path, front_alive: bool
) -> list[dict[str, Any]]:
    """The recorded servers with what the front's watchdog published and what runs now."""
    out = []
    for recorded, seen in _with_health(servers, state_dir):
        server, watched = _overlay(recorded, seen)
        alive = procs.alive(cast(procs.Ident, server))
        if watched == LOST:
            server["state"] = LOST
        elif alive and watched in (None, UP):
            server["state"] = UP
        else:  # the watchdog restarts it (it notices a death within a second)
            server["state"] = "restarting" if front_alive else "down"
        out.append(server)
    return out


def _describe(server: dict[str, Any]) -> str:
    what = f"server on port {server['port']} {server['state']}"
    notes = [str(server["last_error"])] if server.get("last_error") else []
    if server.get("restarts"):
        notes.append(f"restarted {server['restarts']}x")
    if server["state"] == LOST:
        notes.append("redeploy to replace it")
    elif server["state"] == "down":
        notes.append(f"the front restarts it once it runs; log {server.get('log')}")
    return what + (f" ({'; '.join(notes)})" if notes else "")


# ---- the front ------------------------------------------------------------------------------
def heal_front(provider: LocalProvider, record: EndpointRecord) -> str | None:
    """``None`` if the front runs (restarting it if it had died and may be restarted now), else
    why it does not."""
    front = record.details["front"]
    if procs.alive(front):
        return None
    procs.reap(front)
    state_dir = endpoint_dir(provider.store.home, record.name)
    down = f"front (pid {front['pid']}) is down"
    with procs.locked(state_dir, wait=False) as held:
        if not held:
            return f"{down}; a deploy of this endpoint is running"
        if not front.get("argv"):
            return f"{down}; this record predates front restarts: deploy again"
        try:
            token = _front_token(provider, record)
        except TokenError as exc:
            return f"{down}; cannot restart it: {exc}"
        now = time.time()
        failures = int(front.get("failures") or 0)
        last = front.get("restarted_at")
        if last is not None and now - float(last) > STABLE_AFTER:
            failures = 0  # it ran a good while since its last restart: start the backoff over
        wait = backoff(failures) - (now - float(last) if last is not None else float("inf"))
        if wait > 0:
            return f"{down}; restarting it in {math.ceil(wait)}s (restart {failures + 1})"
        ident = procs.spawn(
            front["argv"],
            {procs.ENV_TAG: procs.tag(provider.store.home, record.name, "front")},
            str(state_dir),
            Path(front["log"]),
            stdin_data=token,
        )
        front.update(ident)
        front["restarts"] = int(front.get("restarts") or 0) + 1
        front["failures"] = failures + 1
        front["restarted_at"] = now
        provider.store.put_endpoint(record)  # the new pid, before waiting on it
        if not _answers(provider, front, token):
            tail = procs.log_tail(front.get("log"), lines=5)
            return (
                f"front restarted (pid {front['pid']}) but does not answer; its log ends:\n{tail}"
            )
    return None


def _front_token(provider: LocalProvider, record: EndpointRecord) -> str | None:
    """The deploy's bearer token, if the endpoint needs one; TokenError if it is not here."""
    if record.details.get("auth") != "token":
        return None
    token = api_token(provider.store.home, create=False)
    check_token(token, str(record.details["front"]["host"]))
    wanted = record.details.get("token_sha256")
    if wanted and token_fingerprint(token) != wanted:
        raise TokenError(
            "the API token here ($MLCLOUD_API_TOKEN, else $MLCLOUD_HOME/api-token) is not the "
            "one the endpoint was deployed with; set it and run: "
            f"mlcloud endpoints show {record.name}"
        )
    return token


def _answers(provider: LocalProvider, front: dict[str, Any], token: str | None) -> bool:
    url = http_url(connect_host(str(front["host"])), int(front["port"])) + CONTROL_PATH
    deadline = time.monotonic() + FRONT_ANSWER_TIMEOUT
    while time.monotonic() < deadline:
        ident = cast(procs.Ident, front)
        if not procs.alive(ident):
            procs.reap(ident)
            return False
        try:
            if provider.clients.http.request("GET", url, token=token, timeout=1)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False
