"""Ray Serve endpoints: deploy / status / predict / undeploy (side effects).

One endpoint is one Serve application named like it, at route prefix ``/<name>`` behind the
cluster's Serve proxy (head node, ``serve_host:serve_port`` of the profile, 127.0.0.1 by
default). Everything goes through the dashboard's Serve REST API with the cluster's token
(``GET`` / ``PUT /api/serve/applications/``); the Jobs API client is made first, so the auth
and version checks of ``clients.py`` apply (an unauthenticated cluster is refused).

The model directory reaches every node as the application's ``runtime_env`` ``working_dir``
(a package in the cluster's own store, see ``endpoint_plan``), never through ``storage``: a
model anywhere on this machine can be served by a cluster that shares no disk with it.

Deploy: the packages the cluster lacks are uploaded; the record is written (CREATING or
UPDATING) before the PUT, so an interrupted deploy leaves undeploy enough to clean up; the PUT
carries every application already running plus this one (Serve replaces the whole config; a
lock in ``$MLCLOUD_HOME/ray`` keeps two deploys from this machine from interleaving); then the
deploy waits until Serve reports the application RUNNING at this deployment and ``/readyz``
answers with the new model's digest. An update is zero-downtime: ``max_surge_percent: 100``
starts the new replicas beside the old ones, which serve until the new ones are ready. A
failed update puts the previous application config back (the old model keeps serving); a
failed create removes the application.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mlcloud.errors import (
    AuthError,
    Conflict,
    NotFound,
    NotFoundLocally,
    ProviderError,
    SpecError,
    Transient,
)
from mlcloud.records import EndpointRecord, EndpointState
from providers.common.payload import predict_body
from providers.common.waiting import wait_until
from providers.ray import endpoint_plan, jobs
from providers.ray.endpoint_plan import PUT_APPLICATIONS, RayDeployContext
from providers.ray.job_plan import Package
from providers.ray.settings import is_loopback

if TYPE_CHECKING:
    from mlcloud.records import Plan
    from mlcloud.specs import Deployment
    from providers.ray.provider import RayProvider

log = logging.getLogger("mlcloud.ray")
APPLICATIONS = "/api/serve/applications/"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback / the cluster
_FAILED = frozenset({"DEPLOY_FAILED", "UNHEALTHY"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the replica's traceback
PREDICT_TIMEOUT = 60.0
UNDEPLOY_TIMEOUT = 60.0


# ---- the Serve REST API ------------------------------------------------------------------------
def _serve_api(provider: RayProvider, method: str, body: Any = None) -> Any:
    """One call of the dashboard's Serve REST API; an HTTP error is raised in the Jobs API
    SDK's own words, which ``errors.translate`` maps."""
    provider.clients.jobs  # noqa: B018 (the auth and version checks, once)
    endpoint = provider.clients.endpoint
    data = None if body is None else json.dumps(body).encode()
    headers = {**endpoint.headers, "Content-Type": "application/json"}
    request = urllib.request.Request(  # noqa: S310 (the profile's http(s) address)
        f"{endpoint.url}{APPLICATIONS}", data=data, headers=headers, method=method
    )
    try:
        with _OPENER.open(request, timeout=60) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        raise RuntimeError(f"Request failed with status code {err.code}: {text}.") from None
    except urllib.error.URLError as err:
        raise ConnectionError(f"Failed to connect to Ray at {endpoint.url}: {err}") from None
    return json.loads(raw) if raw.strip() else None


def serve_details(provider: RayProvider) -> dict[str, Any]:
    """``GET /api/serve/applications/``: Serve's instance details (every application)."""
    details = _serve_api(provider, "GET")
    return details if isinstance(details, dict) else {}


def _app(details: dict[str, Any], name: str) -> dict[str, Any] | None:
    app = (details.get("applications") or {}).get(name)
    return app if isinstance(app, dict) else None


def _others(provider: RayProvider, details: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The configs of the other applications, which a PUT must carry to keep them."""
    configs = []
    for other, app in sorted((details.get("applications") or {}).items()):
        if other == name or app.get("status") == "DELETING":
            continue
        config = app.get("deployed_app_config")
        if not config:
            raise provider.origin.error(
                Conflict,
                f"{provider.origin}: Serve application {other!r} was deployed from Python "
                "(serve.run), not by config: a config PUT would remove it",
                hint="deploy it from a config file, or use a cluster without it",
            )
        configs.append(config)
    return configs


def _put(provider: RayProvider, request: dict[str, Any], apps: list[dict[str, Any]]) -> None:
    _serve_api(provider, "PUT", {**request, "applications": apps})


@contextmanager
def _serve_lock(provider: RayProvider) -> Iterator[None]:
    """One Serve config change at a time from this ``$MLCLOUD_HOME`` (read, modify, PUT)."""
    folder = provider.store.home / "ray"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / "serve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---- deploy ------------------------------------------------------------------------------------
def deploy(provider: RayProvider, plan: Plan[Deployment]) -> EndpointRecord:
    """Create or update the endpoint of ``plan``; returns the READY record."""
    ctx = plan.context_as(RayDeployContext)
    calls = [s.call for s in plan.steps]
    if calls != [PUT_APPLICATIONS]:
        raise SpecError(f"plan {plan.id}: expected one {PUT_APPLICATIONS}, got {calls}")
    request = dict(plan.steps[0].request)
    (ours,) = request["applications"]
    model = endpoint_plan.model_package(ctx.model_dir, ctx.model_uri)  # verified: ModelError
    host = request["http_options"]["host"]
    if not is_loopback(host):
        log.warning(
            "mlcloud: the Ray Serve proxy listens on %s (serve_host of profile %r) and does not "
            "check tokens: anyone who can reach it can call the models behind it",
            host,
            provider.name,
        )
    with _serve_lock(provider):
        old = _existing(provider, plan.id)
        details = serve_details(provider)
        previous = _app(details, plan.id)
        if previous is not None and old is None:
            raise provider.origin.error(
                Conflict,
                f"{provider.origin}: a Serve application named {plan.id!r} runs on the cluster "
                "and is not an endpoint of this profile",
                hint="pick another name, or remove that application",
            )
        others = _others(provider, details, plan.id)
        record = _begin(provider, plan, old, _stage(provider, [model, ctx.code]))
        since = float((previous or {}).get("last_deployed_time_s") or 0.0)
        _put(provider, request, [*others, ours])
        try:
            _wait_running(provider, plan.id, since)
            _wait_serving(provider, ctx)
        except BaseException as exc:
            _abandon(provider, request, plan.id, old, previous, exc)
            raise
        return _commit(provider, record, plan, ctx)


def _stage(provider: RayProvider, packages: list[Package]) -> int:
    """Upload what the cluster lacks (from a local copy named like the package)."""
    folder = provider.store.home / "ray" / "packages"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for package in packages:
        path = folder / package.uri.rsplit("/", 1)[-1]
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(package.data)
            tmp.replace(path)
        files.append((package.uri, path))
    return jobs.stage(provider, files)


def _existing(provider: RayProvider, name: str) -> EndpointRecord | None:
    try:
        return provider.store.get_endpoint(name, provider=provider.name)
    except NotFoundLocally:
        return None


def _begin(
    provider: RayProvider, plan: Plan[Deployment], old: EndpointRecord | None, staged: int
) -> EndpointRecord:
    """The record, written before the PUT (undeploy can always clean up)."""
    # a copy: ``old`` is what a failed update puts back
    record = (
        replace(old, details=dict(old.details))
        if old
        else EndpointRecord(
            name=plan.id,
            provider=provider.name,
            type=provider.type,
            state=EndpointState.CREATING,
            native_id=plan.id,
        )
    )
    record.state = EndpointState.UPDATING if old else EndpointState.CREATING
    record.details = {**record.details, "staged_bytes": staged}
    return provider.store.put_endpoint(record)


def _wait_running(provider: RayProvider, name: str, since: float) -> None:
    """Until Serve reports the application RUNNING at a deployment newer than ``since``."""
    timeout = provider.settings.deploy_timeout

    def state() -> dict[str, Any] | None:
        app = _app(serve_details(provider), name)
        if app is not None and app.get("status") in _FAILED and _newer(app, since):
            raise provider.origin.error(
                ProviderError,
                f"{provider.origin}: endpoint {name!r} failed to deploy: {_why(app)}",
                code=str(app.get("status")),
            )
        return app

    wait_until(
        state,
        lambda app: app is not None and app.get("status") == "RUNNING" and _newer(app, since),
        timeout=timeout,
        poll=0.5,
        what=f"Serve application {name!r} to run",
        origin=provider.origin,
    )


def _newer(app: dict[str, Any], since: float) -> bool:
    """The application's config is one applied after ``since`` (a PUT's, not an earlier)."""
    return float(app.get("last_deployed_time_s") or 0.0) > since


def _why(app: dict[str, Any]) -> str:
    """The application's and its deployments' messages, each cut to its first line and, for a
    traceback (a replica that failed to load the model), its last: the exception itself."""
    lines: list[str] = []
    for deployment in [app, *(app.get("deployments") or {}).values()]:
        rows = [r.strip() for r in _ANSI.sub("", str(deployment.get("message") or "")).splitlines()]
        rows = [r for r in rows if r]
        lines += rows[:1] + rows[-1:] if len(rows) > 1 else rows
    return "\n".join(dict.fromkeys(lines)) or str(app.get("status"))


def _wait_serving(provider: RayProvider, ctx: RayDeployContext) -> None:
    """Until the proxy routes ``/readyz`` to a replica of the new model."""

    def ready() -> str | None:
        try:
            code, body = _http(f"{ctx.url}/readyz", None, timeout=5)
        except OSError:
            return None
        return str(body.get("model_sha256")) if code == 200 and isinstance(body, dict) else None

    wait_until(
        ready,
        lambda digest: digest == ctx.model_sha256,
        timeout=provider.settings.deploy_timeout,
        poll=0.2,
        what=f"the endpoint to answer at {ctx.url}",
        origin=provider.origin,
    )


def _abandon(
    provider: RayProvider,
    request: dict[str, Any],
    name: str,
    old: EndpointRecord | None,
    previous: dict[str, Any] | None,
    exc: BaseException,
) -> None:
    """Undo a failed deploy: the previous application config back, or no application."""
    details = serve_details(provider)
    others = _others(provider, details, name)
    config = (previous or {}).get("deployed_app_config")
    if old is not None and config:
        failed = _app(details, name) or {}
        _put(provider, request, [*others, config])
        _wait_running(provider, name, float(failed.get("last_deployed_time_s") or 0.0))
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        old.message = f"the last update failed ({reason}); the previous model still serves"
        provider.store.put_endpoint(old)
        return
    _put(provider, request, others)
    _wait_gone(provider, name)
    provider.store.delete_endpoint(name, provider.name)


def _wait_gone(provider: RayProvider, name: str) -> None:
    wait_until(
        lambda: _app(serve_details(provider), name),
        lambda app: app is None,
        timeout=UNDEPLOY_TIMEOUT,
        poll=0.5,
        what=f"Serve application {name!r} to be deleted",
        origin=provider.origin,
    )


def _commit(
    provider: RayProvider, record: EndpointRecord, plan: Plan[Deployment], ctx: RayDeployContext
) -> EndpointRecord:
    deployment = plan.spec
    record.state, record.message = EndpointState.READY, None
    record.url = ctx.url
    record.model, record.model_sha256 = ctx.model_dir, ctx.model_sha256
    record.source_job = deployment.source_job
    record.spec = deployment.model_dump(mode="json")
    record.details.update(
        {
            "application": plan.id,
            "route_prefix": endpoint_plan.route_prefix(plan.id),
            "working_dir": ctx.model_uri,
            "py_modules": [ctx.code.uri],
        }
    )
    return provider.store.put_endpoint(record)


# ---- status / predict / undeploy ---------------------------------------------------------------
_STATES = {
    "RUNNING": EndpointState.READY,
    "DEPLOYING": EndpointState.UPDATING,
    "NOT_STARTED": EndpointState.UPDATING,
    "DEPLOY_FAILED": EndpointState.FAILED,
    "UNHEALTHY": EndpointState.FAILED,
    "DELETING": EndpointState.FAILED,
}


def status(provider: RayProvider, name: str) -> EndpointRecord:
    """The record, refreshed from Serve's view of the application."""
    record = provider.store.get_endpoint(name, provider=provider.name)
    if record.state is EndpointState.CREATING:
        return record  # a deploy is under way (or died: undeploy cleans up)
    app = _app(serve_details(provider), name)
    message: str | None
    if app is None:
        state, message = EndpointState.FAILED, "the Serve application is gone from the cluster"
    else:
        state = _STATES.get(str(app.get("status")), EndpointState.UPDATING)
        message = _why(app) if state is not EndpointState.READY else None
        if state is record.state is EndpointState.READY:
            message = record.message  # e.g. that the last update failed
    if (state, message) != (record.state, record.message):
        record.state, record.message = state, message
        record = provider.store.put_endpoint(record)
    return record


def predict(provider: RayProvider, name: str, payload: Any) -> Any:
    """POST ``payload`` (``{"instances": [...]}``, or a bare list of instances) to /predict."""
    record = provider.store.get_endpoint(name, provider=provider.name)
    if not record.url or record.state is EndpointState.CREATING:
        raise provider.origin.error(
            Conflict, f"endpoint {name!r} is {record.state}, not serving yet"
        )
    data = predict_body(payload)
    url = f"{record.url}/predict"
    try:
        code, answer = _http(url, data, timeout=PREDICT_TIMEOUT)
    except OSError as exc:
        raise provider.origin.error(
            Transient,
            f"endpoint {name!r} did not answer at {url} ({exc})",
            hint=f"check it with: mlcloud endpoints show {name}",
        ) from None
    if code == 200:
        return answer
    message = answer.get("error") if isinstance(answer, dict) else None
    raise http_error(provider, name, code, str(message or answer))


def _http(url: str, data: bytes | None, timeout: float) -> tuple[int, Any]:
    """A JSON request to the Serve proxy: ``(status, parsed body)`` for any HTTP answer."""
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            code, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        code, raw = err.code, err.read()
    try:
        return code, json.loads(raw)
    except ValueError:
        return code, {"error": raw[:500].decode(errors="replace")}


def http_error(provider: RayProvider, name: str, status: int, message: str) -> ProviderError:
    """The error for an endpoint's non-200 answer: the caller's fault unless the server's."""
    text = f"endpoint {name!r} answered {status}: {message}"
    if status in (401, 403):
        return provider.origin.error(AuthError, text, code=str(status))
    if status == 404:
        return provider.origin.error(NotFound, text, code="404")
    if status >= 500:
        return provider.origin.error(Transient, text, code=str(status))
    return provider.origin.error(ProviderError, text, code=str(status))


def undeploy(provider: RayProvider, name: str) -> EndpointRecord | None:
    """Remove the Serve application, wait until it is gone, forget the endpoint."""
    with _serve_lock(provider):
        record = _existing(provider, name)
        if record is None:
            return None
        details = serve_details(provider)
        if _app(details, name) is not None:
            keys = ("proxy_location", "http_options")
            request: dict[str, Any] = {k: details[k] for k in keys if k in details}
            _put(provider, request, _others(provider, details, name))
            _wait_gone(provider, name)
        provider.store.delete_endpoint(name, provider.name)
        record.state = EndpointState.DELETED
        return record
