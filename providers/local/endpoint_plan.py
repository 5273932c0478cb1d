"""``plan_deploy`` of local endpoints: the exact argv/env/cwd of every process, nothing started.

An update (the name already has a front) plans only the new servers, the switch and the stop of
the old servers; the front, and so the endpoint's address, stays.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlcloud import modeldir
from mlcloud.errors import Conflict, SpecError, UnsupportedFeature
from mlcloud.provider import Plan, PlanStep
from providers.local import endpoint_procs as procs
from providers.local.endpoint_net import (
    DEFAULT_MAX_BODY,
    SERVICE,
    TOKEN_ENV,
    TOKEN_FILE,
    free_port,
    http_url,
    needs_token,
)
from providers.local.front import UPSTREAMS_FILE

if TYPE_CHECKING:
    from mlcloud.specs import Deployment
    from providers.local.endpoints import LocalEndpoints


def plan_deploy(eps: LocalEndpoints, deployment: Deployment) -> Plan:
    """Pure: the exact processes to start (argv/env/cwd) and the switch to make."""
    where = eps.provider.where
    if deployment.traffic:
        raise UnsupportedFeature("traffic split", where, hint="drop traffic: one model per name")
    if deployment.min_replicas != deployment.max_replicas:
        raise UnsupportedFeature(
            "autoscaling replicas {min, max}", where, hint="use a fixed replicas count"
        )
    if deployment.resources.accelerator_count:
        from providers.local.jobs import gpu_count

        if deployment.resources.accelerator_count > gpu_count():
            raise UnsupportedFeature(
                f"accelerators={deployment.resources.accelerators!r}",
                where,
                hint="this machine lacks those GPUs: drop resources.accelerators",
            )
    model = deployment.model.removeprefix("file://")
    if "://" in model:
        raise UnsupportedFeature(
            f"model URI {deployment.model!r}", where, hint="use a local model directory"
        )
    model_dir = Path(model).expanduser().resolve()
    try:
        modeldir.read_manifest(model_dir)
    except (OSError, ValueError) as exc:
        raise SpecError(f"model: {model_dir} is not an mlcloud model directory ({exc})") from None

    name = deployment.name
    state_dir = eps.dir(name)
    old = eps.existing(name)
    old_details: dict[str, Any] = old.details if old else {}
    old_front: dict[str, Any] = old_details.get("front") or {}
    host = deployment.host or old_front.get("host") or "127.0.0.1"
    port = deployment.port or old_front.get("port") or free_port()
    if old_front and (host, port) != (old_front.get("host"), old_front.get("port")):
        raise Conflict(
            f"endpoint {name!r} serves on {old_front.get('host')}:{old_front.get('port')}; "
            f"an update cannot move it to {host}:{port}",
            provider=where,
            hint=f"undeploy it first: mlcloud undeploy {name}",
        )
    generation = int(old_details.get("generation", 0)) + 1
    max_body = int(deployment.env.get("MLCLOUD_SERVE_MAX_BODY", DEFAULT_MAX_BODY))
    auth = needs_token(host)

    servers: list[dict[str, Any]] = []
    for replica in range(deployment.min_replicas):
        server_port = free_port()
        env = {
            **deployment.env,
            "MLCLOUD_SERVE_MODEL": str(model_dir),
            "BENTOML_HOME": str(eps.home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",  # no telemetry calls from a local server
            procs.ENV_TAG: procs.tag(eps.home, name, f"server-g{generation}-{replica}"),
        }
        argv = [sys.executable, "-m", "bentoml", "serve", SERVICE]
        argv += ["--host", "127.0.0.1", "--port", str(server_port)]
        servers.append(
            {
                "argv": argv,
                "env": env,
                "cwd": str(state_dir),
                "port": server_port,
                "log": str(state_dir / f"server-g{generation}-{replica}.log"),
            }
        )
    front_argv = [sys.executable, "-m", "providers.local.front", "--host", host]
    front_argv += ["--port", str(port), "--state-dir", str(state_dir)]
    front_argv += ["--max-body", str(max_body)] + (["--token-stdin"] if auth else [])
    front = {
        "argv": front_argv,
        "env": {procs.ENV_TAG: procs.tag(eps.home, name, "front")},
        "cwd": str(state_dir),
        "host": host,
        "port": port,
        "log": str(state_dir / "front.log"),
    }
    upstreams = [http_url("127.0.0.1", s["port"]) for s in servers]
    steps = [PlanStep("local.Popen", {k: s[k] for k in ("argv", "env", "cwd")}) for s in servers]
    if not old_front:
        request = {k: front[k] for k in ("argv", "env", "cwd")}
        if auth:  # the token itself never appears in a plan
            request["stdin"] = f"bearer token from ${TOKEN_ENV} or $MLCLOUD_HOME/{TOKEN_FILE}"
        steps.append(PlanStep("local.Popen", request))
    steps.append(
        PlanStep(
            "local.SwitchUpstreams",
            {
                "file": str(state_dir / UPSTREAMS_FILE),
                "generation": generation,
                "upstreams": upstreams,
            },
        )
    )
    old_servers = old_details.get("servers") or []
    if old_servers:
        steps.append(
            PlanStep(
                "local.DrainAndStop",
                {"pids": [s["pid"] for s in old_servers], "grace_s": 10},
            )
        )
    return Plan(
        provider=eps.provider.name,
        type=eps.provider.type,
        kind="deploy",
        id=name,
        spec=deployment,
        steps=tuple(steps),
        context={
            "ports": [port, *(s["port"] for s in servers)],
            "generation": generation,
            "model_dir": str(model_dir),
            "servers": servers,
            "front": front,
            "auth": auth,
            "update": bool(old_front),
        },
    )
