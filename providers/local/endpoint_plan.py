"""``plan_deploy`` of local endpoints: the exact argv/env/cwd of every process, nothing started.

An update (the name already has a front) plans only the new servers, the switch and the stop of
the old servers; the front, and so the endpoint's address, stays.

Every process starts in the endpoint's state directory, ``$MLCLOUD_HOME/endpoints/<name>``, which
holds only mlcloud's own files (logs, ``upstreams.json``), never in the caller's working
directory: ``bentoml serve`` puts its working directory first on ``sys.path``, so a user's
project with its own ``serving`` or ``providers`` package would otherwise hide mlcloud's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import modeldir
from mlcloud.errors import Conflict, ModelError, NotFoundLocally, SpecError, UnsupportedFeature
from mlcloud.records import EndpointRecord, Plan, PlanStep
from providers.local import endpoint_procs as procs
from providers.local.endpoint_net import (
    DEFAULT_MAX_BODY,
    SERVICE,
    TOKEN_ENV,
    TOKEN_FILE,
    api_token,
    check_token,
    free_port,
    http_url,
    needs_token,
)
from providers.local.front import UPSTREAMS_FILE
from providers.local.front_conn import Limits

if TYPE_CHECKING:
    from mlcloud.specs import Deployment
    from providers.local.provider import LocalProvider

#: seconds an old server gets to stop after draining, on an update
STOP_GRACE = 10


@dataclass(frozen=True)
class ProcessSpec:
    """One process to start: exactly what ``local.Popen`` shows, and where its output goes."""

    argv: tuple[str, ...]
    env: dict[str, str]  # set on top of the deployer's environment
    cwd: str
    log: str

    def request(self) -> dict[str, object]:
        return {"argv": list(self.argv), "env": dict(self.env), "cwd": self.cwd}


@dataclass(frozen=True)
class ServerSpec(ProcessSpec):
    """A ``bentoml serve`` process on a private 127.0.0.1 port."""

    port: int


@dataclass(frozen=True)
class FrontSpec(ProcessSpec):
    """The endpoint's stable front (``front.py``) on the endpoint's address."""

    host: str
    port: int


@dataclass(frozen=True)
class LocalDeployContext:
    generation: int  # of the servers this plan starts
    model_dir: str
    servers: tuple[ServerSpec, ...]
    front: FrontSpec  # started unless ``update`` (then it runs already)
    auth: bool  # the front requires the bearer token
    update: bool  # the name has a front: this plan replaces its servers
    #: a canary deploy: the new version's weight (percent); the serving version keeps the rest
    #: and its servers. ``None``: a plain deploy, the new version takes all and the old retire.
    canary: int | None = None

    @property
    def version(self) -> str:
        """The id of the model version this plan starts (the front's ``x-mlcloud-version``)."""
        return version_id(self.generation)


def version_id(generation: int) -> str:
    return f"v{generation}"


def serving_versions(record: EndpointRecord) -> dict[str, dict[str, Any]]:
    """``details["versions"]`` of a record, each with its servers' ``ports`` and
    ``generation``; a record from before canaries has its one version made up."""
    details = record.details
    versions = details.get("versions")
    if isinstance(versions, dict) and versions:
        return {v: dict(info) for v, info in versions.items()}
    generation = int(details.get("generation") or 0)
    if not details.get("servers"):
        return {}
    ports = [int(s["port"]) for s in details["servers"]]
    model = {"model": record.model, "sha256": record.model_sha256}
    return {version_id(generation): {**model, "generation": generation, "ports": ports}}


def endpoint_dir(home: Path, name: str) -> Path:
    """The endpoint's state directory, and the working directory of its processes."""
    return home / "endpoints" / name


def existing(provider: LocalProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


def plan_deploy(provider: LocalProvider, deployment: Deployment) -> Plan[Deployment]:
    """Pure: the exact processes to start (argv/env/cwd) and the switch to make."""
    _check_supported(deployment, provider.where)
    model_dir = _model_dir(deployment, provider.where)
    name = deployment.name
    state_dir = endpoint_dir(provider.store.home, name)
    old = existing(provider, name)
    old_details = old.details if old else {}
    canary = _canary(deployment, old, provider)
    host, port = _address(deployment, old_details.get("front") or {}, provider)
    if needs_token(host):  # refused here, before anything starts (a missing one is generated)
        token = api_token(provider.store.home, create=False)
        if token is not None:
            check_token(token, host)
    generation = int(old_details.get("generation", 0)) + 1
    servers = _servers(provider, deployment, model_dir, state_dir, generation)
    front = _front(provider, deployment, state_dir, host, port)
    context = LocalDeployContext(
        generation=generation,
        model_dir=str(model_dir),
        servers=servers,
        front=front,
        auth=needs_token(host),
        update=bool(old_details.get("front")),
        canary=canary,
    )
    steps = _steps(context, state_dir, old)
    volatile = tuple(str(p) for p in (port, *(s.port for s in servers)))
    return provider.make_plan("deploy", name, deployment, steps, context=context, volatile=volatile)


# ---- the steps, top to bottom ---------------------------------------------------------------
def _check_supported(deployment: Deployment, where: str) -> None:
    if deployment.traffic and ("new" not in deployment.traffic or len(deployment.traffic) != 2):
        raise UnsupportedFeature(
            f"traffic split {deployment.traffic}",
            where,
            hint="a local endpoint splits between the new version and the serving one: "
            "traffic: {new: 10, previous: 90}",
        )
    if deployment.min_replicas != deployment.max_replicas:
        raise UnsupportedFeature(
            "autoscaling replicas {min, max}", where, hint="use a fixed replicas count"
        )
    gpus = deployment.resources.accelerator_count
    if gpus:
        from providers.local.job_plan import gpu_count

        if gpus > gpu_count():
            raise UnsupportedFeature(
                f"accelerators={deployment.resources.accelerators!r}",
                where,
                hint="this machine lacks those GPUs: drop resources.accelerators",
            )


def _canary(
    deployment: Deployment, old: EndpointRecord | None, provider: LocalProvider
) -> int | None:
    """The new version's weight of a canary deploy (``traffic: {new, previous}``), or None."""
    if not deployment.traffic:
        return None
    serving = serving_versions(old) if old and old.details.get("front") else {}
    if len(serving) != 1:
        raise provider.origin.error(
            Conflict,
            f"endpoint {deployment.name!r} serves {len(serving)} versions; a canary deploy "
            "needs exactly one serving beside it",
            hint=(
                "deploy it without traffic first"
                if not serving
                else "finish the rollout first: promote or roll back (set_traffic)"
            ),
        )
    (previous,) = set(deployment.traffic) - {"new"}
    if previous not in ("previous", *serving):
        raise SpecError(
            f"traffic {deployment.traffic}: {previous!r} is not the version serving "
            f"{deployment.name!r} ({', '.join(serving)})",
            hint="traffic: {new: 10, previous: 90}",
        )
    return int(deployment.traffic["new"])


def _model_dir(deployment: Deployment, where: str) -> Path:
    model = deployment.model.removeprefix("file://")
    if "://" in model:
        raise UnsupportedFeature(
            f"model URI {deployment.model!r}", where, hint="use a local model directory"
        )
    model_dir = Path(model).expanduser().resolve()
    try:
        modeldir.read_manifest(model_dir)
    except (OSError, ModelError) as exc:  # the spec's ``model:`` names no model directory
        raise SpecError(  # exc already names the directory and why
            f"model: {exc}",
            hint="pass a directory runtime.save_model wrote, or a job id (mlcloud jobs list)",
        ) from None
    return model_dir


def _address(
    deployment: Deployment, old_front: dict[str, object], provider: LocalProvider
) -> tuple[str, int]:
    """The front's ``host:port``: the existing front's (an update cannot move it), else asked for
    or picked."""
    old_host, old_port = old_front.get("host"), old_front.get("port")
    host = deployment.host or str(old_host or "127.0.0.1")
    port = deployment.port or (old_port if isinstance(old_port, int) else free_port())
    if old_front and (host, port) != (old_host, old_port):
        raise provider.origin.error(
            Conflict,
            f"endpoint {deployment.name!r} serves on {old_host}:{old_port}; "
            f"an update cannot move it to {host}:{port}",
            hint=f"undeploy it first: mlcloud undeploy {deployment.name}",
        )
    if not old_front and deployment.port:  # said here, not as the front's traceback later
        _check_bindable(host, port, provider)
    return host, port


def _check_bindable(host: str, port: int, provider: LocalProvider) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise provider.origin.error(
                Conflict,
                f"cannot serve on {host}:{port}: {exc.strerror or exc}",
                hint="choose another --port (or leave it out for a free one), or another --host",
            ) from None


def _servers(
    provider: LocalProvider,
    deployment: Deployment,
    model_dir: Path,
    state_dir: Path,
    generation: int,
) -> tuple[ServerSpec, ...]:
    home = provider.store.home
    from providers.local import capture  # it imports this module

    servers = []
    for replica in range(deployment.min_replicas):
        role = f"server-g{generation}-{replica}"
        port = free_port()
        env = {
            **deployment.env,
            "MLCLOUD_SERVE_MODEL": str(model_dir),
            "BENTOML_HOME": str(home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",  # no telemetry calls from a local server
            procs.ENV_TAG: procs.tag(home, deployment.name, role),
            **capture.server_env(deployment, home, version_id(generation)),
        }
        argv = (
            sys.executable, "-m", "bentoml", "serve", SERVICE,
            "--host", "127.0.0.1", "--port", str(port),
        )  # fmt: skip
        log = str(state_dir / f"{role}.log")
        servers.append(ServerSpec(argv, env, str(state_dir), log, port))
    return tuple(servers)


def _front(
    provider: LocalProvider, deployment: Deployment, state_dir: Path, host: str, port: int
) -> FrontSpec:
    max_body = _positive_env(deployment, "MLCLOUD_SERVE_MAX_BODY", DEFAULT_MAX_BODY, "bytes")
    max_conns = _positive_env(
        deployment, "MLCLOUD_SERVE_MAX_CONNECTIONS", Limits().max_connections, "connections"
    )
    log = str(state_dir / "front.log")
    argv = (
        sys.executable, "-m", "providers.local.front",
        "--host", host, "--port", str(port), "--state-dir", str(state_dir),
        "--max-body", str(max_body), "--max-connections", str(max_conns), "--log-file", log,
        *(["--token-stdin"] if needs_token(host) else []),
    )  # fmt: skip
    env = {procs.ENV_TAG: procs.tag(provider.store.home, deployment.name, "front")}
    return FrontSpec(argv, env, str(state_dir), log, host, port)


def _positive_env(deployment: Deployment, name: str, default: int, unit: str) -> int:
    raw = deployment.env.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(f"env.{name}={raw!r} must be a positive number of {unit}")
    return value


def _steps(ctx: LocalDeployContext, state_dir: Path, old: EndpointRecord | None) -> list[PlanStep]:
    """Start the servers (and the front, unless it runs), switch the front, stop the old ones
    (a canary deploy stops none: the old version keeps its share)."""
    steps = [PlanStep("local.Popen", s.request()) for s in ctx.servers]
    if not ctx.update:
        request = ctx.front.request()
        if ctx.auth:  # the token itself never appears in a plan
            request["stdin"] = f"bearer token from ${TOKEN_ENV} or $MLCLOUD_HOME/{TOKEN_FILE}"
        steps.append(PlanStep("local.Popen", request))
    upstreams = [http_url("127.0.0.1", s.port) for s in ctx.servers]
    switch: dict[str, object] = {
        "file": str(state_dir / UPSTREAMS_FILE),
        "generation": ctx.generation,
        "upstreams": upstreams,
    }
    old_servers = list(old.details.get("servers") or []) if old else []
    if ctx.canary is not None and old is not None:
        (previous,) = serving_versions(old)
        switch["traffic"] = {previous: 100 - ctx.canary, ctx.version: ctx.canary}
        old_servers = []
    steps.append(PlanStep("local.SwitchUpstreams", switch))
    if old_servers:
        pids = [s["pid"] for s in old_servers]
        steps.append(PlanStep("local.DrainAndStop", {"pids": pids, "grace_s": STOP_GRACE}))
    return steps
