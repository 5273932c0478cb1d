"""Local endpoints: ``bentoml serve`` processes behind a stable front (see ``front.py``).

Layout under ``$MLCLOUD_HOME/endpoints/<name>/``: ``upstreams.json`` (the front's upstream list),
``front.log`` and ``server-g<generation>-<replica>.log``. An endpoint is one front process (the
stable ``host:port`` callers use) and N BentoML servers on private 127.0.0.1 ports.

A deploy of an existing name is an update: generation g+1 servers start beside generation g,
the front is switched to them once they are all ready, the old ones are drained (no request in
flight through the front) and stopped. If the new servers never become ready they are stopped,
the old ones keep serving, and the deploy fails with the new servers' log tail.

A deploy holds an exclusive lock on the endpoint directory, so two deploys of one name cannot
interleave. The record is written before any process starts (CREATING / UPDATING), so an
interrupted deploy still leaves undeploy enough to clean up; undeploy also sweeps processes by
their environment tag.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import modeldir
from mlcloud.errors import (
    AuthError,
    Conflict,
    MlcloudError,
    NotFound,
    NotFoundLocally,
    ProviderError,
    ProviderUnavailable,
    SpecError,
    Transient,
)
from mlcloud.progress import Progress
from mlcloud.provider import EndpointRecord, EndpointState, Plan
from providers.local import endpoint_procs as procs
from providers.local.endpoint_net import (
    DRAIN_TIMEOUT,
    TIMEOUT_ENV,
    TOKEN_ENV,
    api_token,
    connect_host,
    has_bentoml,
    http,
    http_url,
)
from providers.local.front import CONTROL_PATH, write_upstreams

if TYPE_CHECKING:
    from mlcloud.specs import Deployment
    from providers.local.provider import LocalProvider


class LocalEndpoints:
    """The endpoint half of the local provider (``LocalProvider`` delegates to it)."""

    def __init__(self, provider: LocalProvider) -> None:
        self.provider = provider
        self.store = provider.store
        self.home = provider.store.home

    # ---- helpers -----------------------------------------------------------------------------
    def dir(self, name: str) -> Path:
        return self.home / "endpoints" / name

    def existing(self, name: str) -> EndpointRecord | None:
        try:
            return self.store.get_endpoint(name, provider=self.provider.name)
        except NotFoundLocally:
            return None

    def _error(self, cls: type[ProviderError], message: str, **kw: Any) -> ProviderError:
        return cls(message, provider=f"local (profile {self.provider.name!r})", **kw)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        state_dir = self.dir(name)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _deploy_running(self, name: str) -> bool:
        """Whether some process holds the endpoint's deploy lock right now."""
        try:
            with open(self.dir(name) / ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
                return False
        except BlockingIOError:
            return True
        except OSError:
            return False

    def _timeout(self) -> float:
        """The profile's ``deploy_timeout``; ``MLCLOUD_DEPLOY_TIMEOUT`` overrides it per call."""
        raw = os.environ.get(TIMEOUT_ENV)
        if not raw:
            from providers.local.jobs import settings

            return settings(self.provider).deploy_timeout
        try:
            return float(raw)
        except ValueError:
            raise SpecError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds") from None

    # ---- plan --------------------------------------------------------------------------------
    def plan_deploy(self, deployment: Deployment) -> Plan:
        """Pure: the exact processes to start (argv/env/cwd) and the switch to make."""
        from providers.local.endpoint_plan import plan_deploy

        return plan_deploy(self, deployment)

    # ---- deploy ------------------------------------------------------------------------------
    def deploy(self, plan: Plan, progress: Callable[[str], None] | None = None) -> EndpointRecord:
        """Create or update the endpoint of ``plan``; returns the READY record."""
        if plan.kind != "deploy" or plan.type != self.provider.type:
            raise SpecError(f"not a local deploy plan: {plan.type}/{plan.kind}")
        if not has_bentoml():
            raise ProviderUnavailable(
                "local endpoints", "pip install 'mlcloud[serve]'", "no bentoml"
            )
        deployment: Deployment = plan.spec  # type: ignore[assignment]
        ctx = plan.context
        model_dir = Path(ctx["model_dir"])
        try:
            modeldir.verify(model_dir)
        except (OSError, ValueError) as exc:
            raise SpecError(f"model {model_dir}: {exc}") from None
        with self._locked(plan.id):
            old = self.existing(plan.id)
            if bool(old and old.details.get("front")) != bool(ctx["update"]) or (
                old and int(old.details.get("generation", 0)) + 1 != ctx["generation"]
            ):
                raise Conflict(
                    f"endpoint {plan.id!r} changed since this plan was made",
                    provider=self.provider.name,
                    hint="plan and deploy again",
                )
            with Progress(progress, "deploying") as show:
                return self._deploy_locked(plan, deployment, old, model_dir, show)

    def _deploy_locked(
        self,
        plan: Plan,
        deployment: Deployment,
        old: EndpointRecord | None,
        model_dir: Path,
        show: Callable[[str], None],
    ) -> EndpointRecord:
        ctx = plan.context
        name, generation = plan.id, int(ctx["generation"])
        token = api_token(self.home, create=True) if ctx["auth"] else None
        front = dict(old.details["front"]) if old else None
        # Work on a copy: ``old`` is what a failed update puts back.
        record = (
            replace(old, details=json.loads(json.dumps(old.details)))
            if old
            else EndpointRecord(
                name=name,
                provider=self.provider.name,
                type=self.provider.type,
                state=EndpointState.CREATING,
                native_id=name,
                details={"generation": 0, "servers": [], "front": None},
            )
        )
        record.state = EndpointState.UPDATING if old else EndpointState.CREATING
        record.details["pending"] = []
        self.store.put_endpoint(record)

        # 1. the new servers beside any old ones, and the front if there is none yet (it starts
        # with no upstreams, in parallel with the servers' model loading)
        started: list[dict[str, Any]] = []
        try:
            for server in ctx["servers"]:
                show(f"starting server on 127.0.0.1:{server['port']}")
                ident = procs.spawn(
                    server["argv"], server["env"], server["cwd"], Path(server["log"])
                )
                started.append({**ident, "port": server["port"]})
                record.details["pending"] = started
                self.store.put_endpoint(record)
            if front is None or not procs.alive(front):
                show("starting the endpoint front")
                spec = ctx["front"]
                ident = procs.spawn(
                    spec["argv"], spec["env"], spec["cwd"], Path(spec["log"]), stdin_data=token
                )
                front = {**ident, "host": spec["host"], "port": spec["port"]}
                record.details["front"] = front
                self.store.put_endpoint(record)
            self._wait_servers_ready(started, show)
            # 2. the switch: publish the new upstream list, confirm the front took it
            show("switching the front to the new servers")
            write_upstreams(
                self.dir(name), generation, [http_url("127.0.0.1", s["port"]) for s in started]
            )
            self._wait_switched(front, generation, token)
        except BaseException as exc:
            self._abandon(record, old, started, generation)
            if isinstance(exc, MlcloudError) or not isinstance(exc, Exception):
                raise  # ours, or Ctrl-C / SystemExit: unchanged
            raise self._error(ProviderError, f"deploy of {name!r} failed: {exc}") from exc

        # 3. drain and stop the previous generation
        previous = list(record.details.get("servers") or [])
        record.details.update(
            {"generation": generation, "servers": started, "front": front, "pending": []}
        )
        record.details["auth"] = "token" if ctx["auth"] else "none"
        record.details["log_dir"] = str(self.dir(name))
        url = http_url(front["host"], front["port"])
        record.state, record.url, record.message = EndpointState.READY, url, None
        record.model, record.model_sha256 = str(model_dir), modeldir.digest(model_dir)
        record.source_job = deployment.source_job
        record.spec = deployment.model_dump(mode="json")
        self.store.put_endpoint(record)
        if previous:
            show("draining the previous servers")
            self._drain(front, [http_url("127.0.0.1", s["port"]) for s in previous], token)
            procs.stop(previous, procs.tag(self.home, name, f"server-g{generation - 1}-"))
        record.details.pop("pending", None)
        return self.store.put_endpoint(record)

    def _abandon(
        self,
        record: EndpointRecord,
        old: EndpointRecord | None,
        started: list[dict[str, Any]],
        generation: int,
    ) -> None:
        """Undo a failed deploy: stop the new servers; keep the old endpoint exactly as it was."""
        if old is None:
            procs.stop(started, procs.tag(self.home, record.name, f"server-g{generation}-"))
            front = record.details.get("front")
            procs.stop([front] if front else [], procs.tag(self.home, record.name, ""))
            self.store.delete_endpoint(record.name, self.provider.name)
            return
        old_servers = old.details.get("servers") or []
        # The front may already list the new servers: point it back at the old ones.
        write_upstreams(
            self.dir(record.name),
            generation + 1,
            [http_url("127.0.0.1", s["port"]) for s in old_servers],
        )
        procs.stop(started, procs.tag(self.home, record.name, f"server-g{generation}-"))
        old.details["front"] = record.details.get("front")  # a restarted front stays recorded
        old.message = f"the update to generation {generation} failed; the old model still serves"
        self.store.put_endpoint(old)

    def _wait_servers_ready(
        self, servers: list[dict[str, Any]], show: Callable[[str], None]
    ) -> None:
        """Poll /readyz of each new server until all answer 200; fail fast on a crash."""
        timeout = self._timeout()
        start = time.monotonic()
        pending = list(servers)
        seen: dict[int, set[int]] = {s["pid"]: set() for s in servers}
        while pending:
            for server in list(pending):
                crashed = self._crashed(server, seen[server["pid"]])
                if crashed:
                    raise self._error(
                        ProviderError,
                        f"the new server on port {server['port']} {crashed} before it was "
                        f"ready; its log ({server['log']}) ends:\n{procs.log_tail(server['log'])}",
                        code="ServerExited",
                    )
                try:
                    status, _ = http("GET", f"http://127.0.0.1:{server['port']}/readyz", timeout=2)
                except OSError:
                    continue
                if status == 200:
                    pending.remove(server)
            if not pending:
                return
            elapsed = time.monotonic() - start
            show(
                f"waiting for {len(pending)}/{len(servers)} server(s) to be ready ({elapsed:.0f}s)"
            )
            if elapsed > timeout:
                server = pending[0]
                raise self._error(
                    Transient,
                    f"the new server on port {server['port']} was not ready after {timeout:.0f}s; "
                    f"its log ({server['log']}) ends:\n{procs.log_tail(server['log'])}",
                    code="ReadyTimeout",
                    hint=f"raise {TIMEOUT_ENV} if the model needs longer to load",
                )
            time.sleep(0.2)

    @staticmethod
    def _crashed(server: dict[str, Any], seen: set[int]) -> str | None:
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

    def _front_state(self, front: dict[str, Any], token: str | None) -> dict[str, Any] | None:
        url = http_url(connect_host(front["host"]), front["port"]) + CONTROL_PATH
        try:
            status, body = http("GET", url, token=token, timeout=2)
        except OSError:
            return None
        return json.loads(body) if status == 200 else None

    def _wait_switched(self, front: dict[str, Any], generation: int, token: str | None) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not procs.alive(front):
                procs.reap(front)
                raise self._error(
                    ProviderError,
                    f"the endpoint front exited; its log ends:\n{procs.log_tail(front['log'])}",
                    code="FrontExited",
                )
            state = self._front_state(front, token)
            if state is not None and state["generation"] == generation:
                return
            time.sleep(0.05)
        raise self._error(Transient, "the endpoint front did not take the new servers in 30s")

    def _drain(self, front: dict[str, Any], old_urls: list[str], token: str | None) -> None:
        """Wait until no request through the front is in flight to the old servers."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            state = self._front_state(front, token)
            if state is None or not any(u in state["inflight"] for u in old_urls):
                return
            time.sleep(0.05)

    # ---- status / predict / undeploy ---------------------------------------------------------
    def endpoint_status(self, name: str) -> EndpointRecord:
        record = self.store.get_endpoint(name, provider=self.provider.name)
        if record.state in (EndpointState.CREATING, EndpointState.UPDATING):
            if self._deploy_running(name):
                return record
            record.state = EndpointState.FAILED  # the deploy died without finishing
            record.message = (
                f"a deploy was interrupted; run mlcloud undeploy {name} and deploy again"
            )
            return self.store.put_endpoint(record)
        if record.state is not EndpointState.READY:
            return record
        dead = []
        front = record.details.get("front")
        if front and not procs.alive(front):
            dead.append(f"front (pid {front['pid']}, log {front.get('log')})")
        for server in record.details.get("servers") or []:
            if not procs.alive(server):
                where = f"pid {server['pid']}, log {server.get('log')}"
                dead.append(f"server on port {server['port']} ({where})")
        if dead:
            record.state = EndpointState.FAILED
            record.message = "process(es) exited: " + "; ".join(dead)
            self.store.put_endpoint(record)
        return record

    def predict(self, name: str, payload: Any) -> Any:
        """POST ``payload`` (``{"instances": [...]}``, or a bare list of instances) to /predict."""
        record = self.store.get_endpoint(name, provider=self.provider.name)
        front = record.details.get("front")
        if not front or record.state is EndpointState.CREATING:
            raise self._error(Conflict, f"endpoint {name!r} is {record.state}, not serving yet")
        body = payload if isinstance(payload, dict) else {"instances": payload}
        try:
            data = json.dumps(body).encode()
        except (TypeError, ValueError) as exc:
            raise SpecError(f"the payload is not JSON-serialisable: {exc}") from None
        token = (
            api_token(self.home, create=False) if record.details.get("auth") == "token" else None
        )
        url = http_url(connect_host(front["host"]), front["port"]) + "/predict"
        try:
            status, raw = http("POST", url, data, token=token, timeout=60)
        except OSError as exc:
            state = self.endpoint_status(name)
            raise self._error(
                Transient,
                f"endpoint {name!r} did not answer at {url} ({exc}); state {state.state}"
                + (f": {state.message}" if state.message else ""),
                hint=f"check it with: mlcloud endpoints show {name}",
            ) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"error": raw[:500].decode(errors="replace")}
        if status == 200:
            return answer
        message = answer.get("error") if isinstance(answer, dict) else None
        message = f"endpoint {name!r} answered {status}: {message or answer}"
        if status in (401, 403):
            raise self._error(
                AuthError,
                message,
                code=str(status),
                hint=f"set {TOKEN_ENV} to the endpoint's token",
            )
        if status == 404:
            raise self._error(NotFound, message, code="404")
        if status >= 500:
            raise self._error(Transient, message, code=str(status))
        raise self._error(ProviderError, message, code=str(status))

    def undeploy(self, name: str) -> EndpointRecord | None:
        """Stop the front and the servers, verify they are gone, forget the endpoint."""
        with self._locked(name):
            record = self.existing(name)
            idents: list[dict[str, Any]] = []
            if record is not None:
                details = record.details
                idents += list(details.get("servers") or []) + list(details.get("pending") or [])
                if details.get("front"):
                    idents.append(details["front"])
            try:
                procs.stop(idents, procs.tag(self.home, name, ""))
            except RuntimeError as exc:
                raise self._error(ProviderError, f"undeploy of {name!r}: {exc}") from None
            if record is None:
                return None
            self.store.delete_endpoint(name, self.provider.name)
            record.state = EndpointState.DELETED
            return record

    def list_endpoints(self) -> list[EndpointRecord]:
        return [self.endpoint_status(r.name) for r in self.store.list_endpoints(self.provider.name)]
