"""Local endpoints: ``bentoml serve`` processes behind a stable front (see ``front.py``).

Layout under ``$MLCLOUD_HOME/endpoints/<name>/``: ``upstreams.json`` (the front's upstream list),
``front.log`` and ``server-g<generation>-<replica>.log``. An endpoint is one front process (the
stable ``host:port`` callers use) and N BentoML servers on private 127.0.0.1 ports.

A deploy of an existing name is an update: generation g+1 servers start beside generation g,
the front is switched to them once they are all ready, the old ones are drained (no request in
flight through the front) and stopped. If the new servers never become ready they are stopped,
the old ones keep serving, and the deploy fails with the new servers' log tail.

A canary deploy (``traffic: {new: W, previous: 100-W}``) starts the new servers the same way but
keeps the old ones: the front routes W percent to the new version and the rest to the serving
one, each response naming its version (``x-mlcloud-version``). ``set_traffic`` then moves the
weights and retires a version left out (``endpoint_traffic.py``).

A deploy holds an exclusive lock on the endpoint directory, so two deploys of one name cannot
interleave. The record is written before any process starts (CREATING / UPDATING), so an
interrupted deploy still leaves undeploy enough to clean up; undeploy also sweeps processes by
their environment tag.

Self-healing: the front restarts a dead server (``front_watch.py``, which publishes
``health.json``); ``status`` restarts a dead front, with backoff, and reports what is restarting
and how often it was restarted (``details.restarts``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlcloud import modeldir
from mlcloud.errors import (
    Conflict,
    ModelError,
    ProviderError,
    ProviderUnavailable,
    SpecError,
    Transient,
)
from mlcloud.progress import Progress
from mlcloud.records import EndpointRecord, EndpointState, Plan
from providers.common.payload import predict_body
from providers.common.waiting import wait_until
from providers.local import endpoint_procs as procs
from providers.local.endpoint_net import (
    TIMEOUT_ENV,
    api_token,
    check_token,
    connect_host,
    has_bentoml,
    http_url,
    token_fingerprint,
)
from providers.local.endpoint_plan import (
    LocalDeployContext,
    endpoint_dir,
    existing,
    serving_versions,
)
from providers.local.endpoint_traffic import (
    FrontIdent,
    ServerIdent,
    Split,
    publish,
    retire,
    split_of,
    wait_switched,
)
from providers.local.errors import LocalProcessError, http_error

if TYPE_CHECKING:
    from mlcloud.specs import Deployment
    from providers.local.provider import LocalProvider


# ---- deploy ---------------------------------------------------------------------------------
def deploy(provider: LocalProvider, plan: Plan[Deployment]) -> EndpointRecord:
    """Create or update the endpoint of ``plan``; returns the READY record."""
    if not has_bentoml():
        raise ProviderUnavailable("local endpoints", "pip install 'mlcloud[serve]'", "no bentoml")
    ctx = plan.context_as(LocalDeployContext)
    model_dir = Path(ctx.model_dir)
    try:
        modeldir.verify(model_dir)  # changed since it was planned: a ModelError
    except OSError as exc:
        raise ModelError(f"model {model_dir}: {exc}") from None
    with procs.locked(endpoint_dir(provider.store.home, plan.id)):
        old = existing(provider, plan.id)
        if bool(old and old.details.get("front")) != ctx.update or (
            old and int(old.details.get("generation", 0)) + 1 != ctx.generation
        ):
            raise provider.origin.error(
                Conflict,
                f"endpoint {plan.id!r} changed since this plan was made",
                hint="plan and deploy again",
            )
        with Progress(None, "deploying") as show:
            return _Deploy(provider, plan, old, show).run()


class _Deploy:
    """One deploy under the endpoint's lock: start, wait, switch; then retire the old servers.
    Anything failing before the switch is undone (``_abandon``)."""

    def __init__(
        self,
        provider: LocalProvider,
        plan: Plan[Deployment],
        old: EndpointRecord | None,
        show: Callable[[str], None],
    ) -> None:
        self.provider = provider
        self.deployment = plan.spec
        self.ctx = plan.context_as(LocalDeployContext)
        self.name = plan.id
        self.home = provider.store.home
        self.old = old
        self.show = show
        self.token = api_token(self.home, create=True) if self.ctx.auth else None
        if self.ctx.auth:
            check_token(self.token, self.ctx.front.host)
        front = old.details.get("front") if old else None
        self.front = cast(FrontIdent, dict(front)) if front else None
        self.started: list[ServerIdent] = []
        self.record = self._begin()

    def run(self) -> EndpointRecord:
        try:
            # 1. the new servers beside any old ones, and the front if there is none yet (it
            # starts with no upstreams, in parallel with the servers' model loading)
            self._start_servers()
            front = self._ensure_front()
            _wait_servers_ready(self.provider, self.started, self.show)
            # 2. the switch: publish the new upstream list, confirm the front took it
            self.show("switching the front to the new servers")
            publish(self.home, self.name, self.ctx.generation, self._split())
            wait_switched(self.provider, front, self.ctx.generation, self.token)
        except BaseException:
            self._abandon()
            raise
        # 3. drain and stop the previous generation (a canary deploy keeps it serving)
        previous = self._commit(front)
        self._retire(front, previous)
        return self.record

    def _split(self) -> Split:
        """What the front routes to after the switch: the new version alone, or beside the
        serving one for a canary deploy."""
        new: Split = {self.ctx.version: (100, self.started)}
        if self.ctx.canary is None or self.old is None:
            return new
        state_dir = endpoint_dir(self.home, self.name)
        ((previous, (_, servers)),) = split_of(self.old, state_dir).items()
        return {
            previous: (100 - self.ctx.canary, servers),
            self.ctx.version: (self.ctx.canary, self.started),
        }

    def _begin(self) -> EndpointRecord:
        """The record, written before any process starts (undeploy can always clean up)."""
        old = self.old
        # Work on a copy: ``old`` is what a failed update puts back.
        record = (
            replace(old, details=json.loads(json.dumps(old.details)))
            if old
            else EndpointRecord(
                name=self.name,
                provider=self.provider.name,
                type=self.provider.type,
                state=EndpointState.CREATING,
                native_id=self.name,
                details={"generation": 0, "servers": [], "front": None},
            )
        )
        record.state = EndpointState.UPDATING if old else EndpointState.CREATING
        record.details["pending"] = []
        return self.provider.store.put_endpoint(record)

    def _start_servers(self) -> None:
        for server in self.ctx.servers:
            self.show(f"starting server on 127.0.0.1:{server.port}")
            ident = procs.spawn(server.argv, server.env, server.cwd, Path(server.log))
            self.started.append({**ident, "port": server.port})
            self.record.details["pending"] = self.started
            self.provider.store.put_endpoint(self.record)

    def _ensure_front(self) -> FrontIdent:
        if self.front is not None and procs.alive(self.front):
            return self.front
        self.show("starting the endpoint front")
        spec = self.ctx.front
        ident = procs.spawn(spec.argv, spec.env, spec.cwd, Path(spec.log), stdin_data=self.token)
        front = {**ident, "host": spec.host, "port": spec.port, "argv": list(spec.argv)}
        self.front = cast(FrontIdent, front)
        self.record.details["front"] = self.front
        self.provider.store.put_endpoint(self.record)
        return self.front

    def _commit(self, front: FrontIdent) -> dict[str, list[ServerIdent]]:
        """The endpoint serves the new generation: record it READY; returns the versions to
        retire with their servers (none after a canary deploy)."""
        record, deployment, model_dir = self.record, self.deployment, Path(self.ctx.model_dir)
        digest = modeldir.digest(model_dir)
        state_dir = endpoint_dir(self.home, self.name)
        split = split_of(self.old, state_dir) if self.old else {}
        versions = serving_versions(self.old) if self.old else {}
        servers = [s for _, ss in split.values() for s in ss]
        previous = {v: ss for v, (_, ss) in split.items()}
        if self.ctx.canary is None:
            versions, servers, traffic = {}, [], {}
        else:
            previous, traffic = {}, {v: 100 - self.ctx.canary for v in split}
        new = self.ctx.version
        traffic[new] = 100 if self.ctx.canary is None else self.ctx.canary
        versions[new] = {
            "model": str(model_dir),
            "sha256": digest,
            "generation": self.ctx.generation,
            "ports": [s["port"] for s in self.started],
        }
        record.details.update(
            {
                "generation": self.ctx.generation,
                "servers": servers + self.started,
                "versions": versions,
                "traffic": traffic,
                "newest": new,
                "front": front,
                "pending": [],
                "auth": "token" if self.ctx.auth else "none",
                "token_sha256": token_fingerprint(self.token),
                "log_dir": str(endpoint_dir(self.home, self.name)),
            }
        )
        record.state, record.message = EndpointState.READY, None
        record.url = http_url(front["host"], front["port"])
        record.model, record.model_sha256 = str(model_dir), digest
        record.source_job = deployment.source_job
        record.spec = deployment.model_dump(mode="json")
        self.provider.store.put_endpoint(record)
        return previous

    def _retire(self, front: FrontIdent, previous: dict[str, list[ServerIdent]]) -> None:
        if previous:
            self.show("draining the previous servers")
            retire(self.provider, self.name, front, previous, self.token)
        self.record.details.pop("pending", None)
        self.record = self.provider.store.put_endpoint(self.record)

    def _abandon(self) -> None:
        """Undo a failed deploy: stop the new servers; keep the old endpoint exactly as it was."""
        record, old, generation = self.record, self.old, self.ctx.generation
        store = self.provider.store
        new_servers = procs.tag(self.home, record.name, f"server-g{generation}-")
        if old is None:
            front = record.details.get("front")
            procs.stop(
                [front] if front else [], procs.tag(self.home, record.name, "front"), exact=True
            )
            procs.stop(self.started, procs.tag(self.home, record.name, ""))
            store.delete_endpoint(record.name, self.provider.name)
            return
        # The front may already list the new servers: point it back at the old ones (as they
        # run now: the front may have restarted some), with the split they had.
        state_dir = endpoint_dir(self.home, record.name)
        publish(self.home, record.name, generation + 1, split_of(old, state_dir))
        procs.stop(self.started, new_servers)
        old.details["front"] = record.details.get("front")  # a restarted front stays recorded
        old.message = f"the update to generation {generation} failed; the old model still serves"
        store.put_endpoint(old)


# ---- waiting on the processes ---------------------------------------------------------------
def _deploy_timeout(provider: LocalProvider) -> float:
    """The profile's ``deploy_timeout``; ``MLCLOUD_DEPLOY_TIMEOUT`` overrides it per call."""
    raw = os.environ.get(TIMEOUT_ENV)
    if not raw:
        return provider.settings.deploy_timeout
    try:
        return float(raw)
    except ValueError:
        raise SpecError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds") from None


def _wait_servers_ready(
    provider: LocalProvider, servers: list[ServerIdent], show: Callable[[str], None]
) -> None:
    """Poll /readyz of each new server until all answer 200; fail fast on a crash."""
    timeout = _deploy_timeout(provider)
    start = time.monotonic()
    pending = list(servers)
    seen: dict[int, set[int]] = {s["pid"]: set() for s in servers}

    def still_pending() -> list[ServerIdent]:
        for server in list(pending):
            crashed = _crashed(server, seen[server["pid"]])
            if crashed:
                raise provider.origin.error(
                    ProviderError,
                    f"the new server on port {server['port']} {crashed} before it was ready; "
                    f"its log ({server['log']}) ends:\n{procs.log_tail(server['log'])}",
                    code="ServerExited",
                )
            if _ready(provider, server):
                pending.remove(server)
        if pending:
            elapsed = time.monotonic() - start
            show(
                f"waiting for {len(pending)}/{len(servers)} server(s) to be ready ({elapsed:.0f}s)"
            )
        return pending

    try:
        wait_until(
            still_pending,
            lambda left: not left,
            timeout=timeout,
            poll=0.2,
            what="the new servers to be ready",
            origin=provider.origin,
        )
    except Transient as exc:
        if exc.code != "WaitTimeout":
            raise
        server = pending[0]
        raise provider.origin.error(
            Transient,
            f"the new server on port {server['port']} was not ready after {timeout:.0f}s; "
            f"its log ({server['log']}) ends:\n{procs.log_tail(server['log'])}",
            code="ReadyTimeout",
            hint=f"raise {TIMEOUT_ENV} if the model needs longer to load",
        ) from None


def _ready(provider: LocalProvider, server: ServerIdent) -> bool:
    url = f"http://127.0.0.1:{server['port']}/readyz"
    try:
        code, _ = provider.clients.http.request("GET", url, timeout=2)
    except OSError:
        return False
    return code == 200


def _crashed(server: ServerIdent, seen: set[int]) -> str | None:
    """Why a starting server is beyond hope, or None.

    BentoML's arbiter restarts a worker whose model failed to load, forever; a worker that
    exits before the server was ever ready is a load failure, not a blip.
    """
    if not procs.alive(server):
        procs.reap(server)
        return "exited"
    now = procs.workers(server)
    if seen - now:
        return "lost a worker (the model failed to load)"
    seen |= now
    return None


# ---- status / predict / undeploy ------------------------------------------------------------
def status(provider: LocalProvider, name: str) -> EndpointRecord:
    """The record, refreshed from the processes: a dead front is restarted (with backoff), a
    dead server is being restarted by the front (see ``endpoint_heal``)."""
    record = provider.store.get_endpoint(name, provider=provider.name)
    if record.state in (EndpointState.CREATING, EndpointState.UPDATING):
        if procs.deploy_running(endpoint_dir(provider.store.home, name)):
            return record
        record.state = EndpointState.FAILED  # the deploy died without finishing
        record.message = f"a deploy was interrupted; run mlcloud undeploy {name} and deploy again"
        record.details["interrupted"] = True
        return provider.store.put_endpoint(record)
    details = record.details
    if record.state in (EndpointState.READY, EndpointState.FAILED) and (
        details.get("front") and details.get("servers") and not details.get("interrupted")
    ):
        from providers.local import endpoint_heal

        return endpoint_heal.observe(provider, record)
    return record


def predict(provider: LocalProvider, name: str, payload: Any) -> Any:
    """POST ``payload`` (``{"instances": [...]}``, or a bare list of instances) to /predict.
    If the front does not answer, ``status`` restarts it and the request is sent once more."""
    record = provider.store.get_endpoint(name, provider=provider.name)
    if not record.details.get("front") or record.state is EndpointState.CREATING:
        raise provider.origin.error(
            Conflict, f"endpoint {name!r} is {record.state}, not serving yet"
        )
    data = predict_body(payload)
    auth = record.details.get("auth") == "token"
    token = api_token(provider.store.home, create=False) if auth else None
    for attempt in (1, 2):
        front = record.details["front"]
        url = http_url(connect_host(front["host"]), front["port"]) + "/predict"
        try:
            code, raw = provider.clients.http.request("POST", url, data, token=token, timeout=60)
            break
        except OSError as exc:
            pid = front["pid"]
            _settle(front)
            record = status(provider, name)
            if attempt == 1 and record.details["front"]["pid"] != pid:
                continue  # the front was restarted: once more
            raise provider.origin.error(
                Transient,
                f"endpoint {name!r} did not answer at {url} ({exc}); state {record.state}"
                + (f": {record.message}" if record.message else ""),
                hint=f"check it with: mlcloud endpoints show {name}",
            ) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"error": raw[:500].decode(errors="replace")}
    if code == 200:
        return answer
    message = answer.get("error") if isinstance(answer, dict) else None
    error = http_error(provider.origin, name, code, str(message or answer))
    if error.hint is None:  # the server's own log for its failures, the payload for ours
        logs = [str(s["log"]) for s in record.details.get("servers") or [] if s.get("log")]
        error.hint = (
            f"the server's log: {', '.join(logs)}"
            if code >= 500 and logs
            else 'check the request: {"instances": [...]}, each shaped as the model\'s input'
        )
    raise error


def _settle(front: FrontIdent, within: float = 1.0) -> None:
    """A front that did not answer may be dying (a SIGKILL takes a few ms, longer on a busy
    machine, during which it still looks alive): give it a moment to be gone, so that
    ``status`` restarts it instead of reporting a live front that refused."""
    deadline = time.monotonic() + within
    while procs.alive(front) and time.monotonic() < deadline:
        time.sleep(0.02)


def undeploy(provider: LocalProvider, name: str) -> EndpointRecord | None:
    """Stop the front and the servers, verify they are gone, forget the endpoint."""
    home = provider.store.home
    with procs.locked(endpoint_dir(home, name)):
        record = existing(provider, name)
        idents: list[procs.Ident] = []
        front: list[procs.Ident] = []
        if record is not None:
            details = record.details
            idents += list(details.get("servers") or []) + list(details.get("pending") or [])
            front = [details["front"]] if details.get("front") else []
        try:
            # The front first: it restarts servers that die, so it must be gone before they go.
            procs.stop(front, procs.tag(home, name, "front"), exact=True)
            procs.stop(idents, procs.tag(home, name, ""))
        except LocalProcessError as exc:
            raise LocalProcessError(f"undeploy of {name!r}: {exc}", code=exc.code) from None
        if record is None:
            return None
        provider.store.delete_endpoint(name, provider.name)
        record.state = EndpointState.DELETED
        return record
