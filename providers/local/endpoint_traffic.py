"""Traffic between a local endpoint's model versions, and the front's control path.

A version is the set of servers one deploy started (id ``v<generation>``). A plain deploy
leaves one version at 100; a canary deploy (``traffic: {new: W, previous: 100-W}``) starts the
new version's servers beside the serving one and gives it W percent. ``set_traffic`` changes
the weights (the front takes the new split atomically, confirmed on its control path) and
retires the versions left out: drained through the front, then stopped. The record carries
``details["traffic"]`` (version → percent), ``details["versions"]`` (version → model, sha256,
generation, ports) and ``details["newest"]``.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlcloud.errors import Conflict, ProviderError, Transient
from mlcloud.records import EndpointRecord, EndpointState
from providers.common.waiting import wait_until
from providers.local import endpoint_procs as procs
from providers.local.endpoint_heal import current_servers
from providers.local.endpoint_net import DRAIN_TIMEOUT, api_token, connect_host, http_url
from providers.local.endpoint_plan import STOP_GRACE, endpoint_dir, serving_versions
from providers.local.front import CONTROL_PATH, STATS_PATH, FrontState, write_upstreams

if TYPE_CHECKING:
    from providers.local.provider import LocalProvider

SWITCH_TIMEOUT = 30.0  # seconds for the front to take a new upstream list


class ServerIdent(procs.Ident):
    port: int


#: version id -> (weight in percent, its servers): what the front routes to
Split = dict[str, tuple[int, list[ServerIdent]]]


class _FrontAddress(procs.Ident):
    host: str
    port: int


class FrontIdent(_FrontAddress, total=False):
    argv: list[str]  # how to start it again
    restarts: int
    failures: int  # consecutive restarts: the backoff's exponent
    restarted_at: float


def publish(home: Path, name: str, generation: int, split: Split) -> None:
    """Point the front at the servers of ``split`` with its weights (their processes too: its
    watchdog restarts them)."""
    urls: list[str] = []
    watched: list[dict[str, Any]] = []
    versions: dict[str, dict[str, Any]] = {}
    for version, (weight, servers) in split.items():
        mine = [http_url("127.0.0.1", s["port"]) for s in servers]
        versions[version] = {"weight": weight, "upstreams": mine}
        urls += mine
        watched += [
            {"url": url, "pid": s["pid"], "create_time": s.get("create_time"), "log": s.get("log")}
            for url, s in zip(mine, servers, strict=True)
        ]
    write_upstreams(endpoint_dir(home, name), generation, urls, watched, versions)


def split_of(record: EndpointRecord, state_dir: Path) -> Split:
    """The record's versions with their weights and servers (as they run now: the front may
    have restarted some)."""
    versions = serving_versions(record)
    traffic = record.details.get("traffic") or {}
    servers = current_servers(state_dir, record.details.get("servers") or [])
    out: Split = {}
    for version, info in versions.items():
        ports = set(info.get("ports") or [])
        weight = int(traffic.get(version, 100 if len(versions) == 1 else 0))
        out[version] = (weight, [s for s in servers if s["port"] in ports])
    return out


def retire(
    provider: LocalProvider,
    name: str,
    front: FrontIdent,
    versions: dict[str, list[ServerIdent]],
    token: str | None,
) -> None:
    """Drain the servers of ``versions`` (no request in flight through the front), then stop
    them, each version's processes swept by its generation's tag."""
    home = provider.store.home
    urls = [http_url("127.0.0.1", s["port"]) for ss in versions.values() for s in ss]
    drain(provider, front, urls, token)
    for version, servers in versions.items():
        role = f"server-g{version.removeprefix('v')}-"
        procs.stop(servers, procs.tag(home, name, role), grace=STOP_GRACE)


def front_state(provider: LocalProvider, front: FrontIdent, token: str | None) -> FrontState | None:
    """The front's answer on its control path; ``None`` when it did not answer 200."""
    url = http_url(connect_host(front["host"]), front["port"]) + CONTROL_PATH
    try:
        code, body = provider.clients.http.request("GET", url, token=token, timeout=2)
    except OSError:
        return None
    return cast(FrontState, json.loads(body)) if code == 200 else None


def wait_switched(
    provider: LocalProvider, front: FrontIdent, generation: int, token: str | None
) -> None:
    def state() -> FrontState | None:
        if not procs.alive(front):
            procs.reap(front)
            raise provider.origin.error(
                ProviderError,
                f"the endpoint front exited; its log ends:\n{procs.log_tail(front['log'])}",
                code="FrontExited",
            )
        return front_state(provider, front, token)

    wait_until(
        state,
        lambda s: s is not None and s["generation"] == generation,
        timeout=SWITCH_TIMEOUT,
        poll=0.05,
        what="the endpoint front to take the new servers",
        origin=provider.origin,
    )


def drain(
    provider: LocalProvider, front: FrontIdent, old_urls: list[str], token: str | None
) -> None:
    """Wait until no request through the front is in flight to the old servers (at most
    ``DRAIN_TIMEOUT``; after that they are stopped regardless)."""
    with contextlib.suppress(Transient):
        wait_until(
            lambda: front_state(provider, front, token),
            lambda s: s is None or not any(u in s["inflight"] for u in old_urls),
            timeout=DRAIN_TIMEOUT,
            poll=0.05,
            what="the old servers to drain",
            origin=provider.origin,
        )


def set_traffic(
    provider: LocalProvider, record: EndpointRecord, weights: dict[str, int]
) -> EndpointRecord:
    """Route ``weights`` (version → percent; checked by ``Provider.set_traffic``) and retire
    the versions left out. The versions kept serve throughout."""
    home, name = provider.store.home, record.name
    state_dir = endpoint_dir(home, name)
    with procs.locked(state_dir):
        record = provider.store.get_endpoint(name, provider=provider.name)  # fresh, locked
        details = record.details
        if record.state is not EndpointState.READY or not details.get("front"):
            raise provider.origin.error(
                Conflict,
                f"endpoint {name!r} is {record.state}; its traffic can change once it is ready",
                hint=f"check it with: mlcloud endpoints show {name}",
            )
        front = cast(FrontIdent, details["front"])
        token = api_token(home, create=False) if details.get("auth") == "token" else None
        split = split_of(record, state_dir)
        keep: Split = {v: (weights[v], split[v][1]) for v in weights}
        gone = {v: servers for v, (_, servers) in split.items() if v not in weights}
        generation = int(details.get("generation") or 0) + 1
        publish(home, name, generation, keep)
        wait_switched(provider, front, generation, token)
        versions = serving_versions(record)
        heaviest = max(weights, key=lambda v: weights[v])
        details.update(
            {
                "generation": generation,
                "traffic": dict(weights),
                "versions": {v: versions[v] for v in weights},
                "servers": [s for _, servers in keep.values() for s in servers],
            }
        )
        record.model = versions[heaviest].get("model") or record.model
        record.model_sha256 = versions[heaviest].get("sha256") or record.model_sha256
        record = provider.store.put_endpoint(record)
        if gone:
            retire(provider, name, front, gone, token)
    return record


def version_stats(provider: LocalProvider, name: str) -> dict[str, Any]:
    """The front's ``/-/stats`` (per-version counters, cumulative since the front started),
    with ``epoch`` naming that front (a restarted one counts from zero)."""
    record = provider.store.get_endpoint(name, provider=provider.name)
    front = record.details.get("front")
    if not front:
        raise provider.origin.error(Conflict, f"endpoint {name!r} has no front yet")
    auth = record.details.get("auth") == "token"
    token = api_token(provider.store.home, create=False) if auth else None
    url = http_url(connect_host(str(front["host"])), int(front["port"])) + STATS_PATH
    try:
        code, body = provider.clients.http.request("GET", url, token=token, timeout=5)
    except OSError as exc:
        raise provider.origin.error(
            Transient, f"endpoint {name!r}: its front did not answer {url} ({exc})"
        ) from None
    if code != 200:
        raise provider.origin.error(
            ProviderError, f"endpoint {name!r}: {url} answered {code}: {body[:200]!r}"
        )
    data = cast(dict[str, Any], json.loads(body))
    data["epoch"] = f"{data.get('pid')}:{data.get('started')}"
    return data
