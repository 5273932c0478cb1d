"""The FastAPI app: ``create_app(settings)``.

Every route calls :mod:`mlcloud.api` (in the threadpool: the facade blocks) and renders what
it returns; an ``MlcloudError`` becomes problem JSON (:mod:`mlcloud.server.problems`). uvicorn
runs it (``mlcloud server``); on SIGTERM it stops accepting, lets in-flight requests finish
(up to ``Settings.graceful_timeout_s``) and exits.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlcloud import errors
from mlcloud.server import problems, warnings_relay
from mlcloud.server.auth import AuthProblem, RateLimiter, TokenVerifier, check_startup
from mlcloud.server.fastpath import PredictFastPath
from mlcloud.server.observe import ObserveMiddleware
from mlcloud.server.settings import Settings
from mlcloud.server.warnings_relay import RelayWarnings
from mlcloud.store import Store

log = logging.getLogger("mlcloud.server")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(check_startup, settings)  # beyond loopback: tokens or no start
        log.info("ready", extra={"host": settings.host, "port": settings.port})
        from mlcloud.monitor import alerts
        from mlcloud.pipelines import start_thread  # pipeline triggers (one worker fires them)

        _, stop_scheduler = start_thread()
        _, stop_checks = alerts.start_thread()  # endpoints' drift checks (claimed in the store)
        # rollouts the pipelines' runners start, or whose controller died, run here (threads)
        from mlcloud.rollouts import start_adopter

        _, stop_adopter = start_adopter()
        yield
        stop_scheduler.set()
        stop_checks.set()
        stop_adopter.set()
        log.info("stopped: in-flight requests finished")

    from mlcloud import __version__ as version

    app = FastAPI(
        title="mlcloud",
        version=version,
        summary="Jobs, endpoints and models on every provider, for a team.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = TokenVerifier(settings.token_cache_s)
    app.state.limiter = RateLimiter(settings.predict_rate, settings.predict_burst)
    app.add_middleware(PredictFastPath)  # inside ObserveMiddleware: still access-logged
    app.add_middleware(RelayWarnings)  # mlcloud's warnings, told to the caller
    app.add_middleware(ObserveMiddleware)
    warnings_relay.install()
    _handlers(app)
    _health(app)
    _routers(app)
    return app


def _routers(app: FastAPI) -> None:
    from mlcloud.server import (
        routes_admin,
        routes_endpoints,
        routes_jobs,
        routes_models,
        routes_monitor,
        routes_pipelines,
        routes_rollouts,
    )
    from mlcloud.server.gateway import router as gateway

    app.include_router(routes_jobs.router)
    app.include_router(gateway)  # before /v1/endpoints/{name}: ":predict" is its own route
    app.include_router(routes_endpoints.router)
    app.include_router(routes_models.router)
    app.include_router(routes_rollouts.router)
    app.include_router(routes_pipelines.router)
    app.include_router(routes_monitor.router)
    app.include_router(routes_admin.router)


def _problem(
    request: Request, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    request.state.error_kind = body["kind"]
    body.setdefault("instance", request.url.path)
    return JSONResponse(
        body, status_code=body["status"], headers=headers, media_type=problems.PROBLEM_JSON
    )


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.MlcloudError)
    async def mlcloud_error(request: Request, exc: errors.MlcloudError) -> JSONResponse:
        return _problem(request, problems.problem(exc))

    @app.exception_handler(AuthProblem)
    async def auth_problem(request: Request, exc: AuthProblem) -> JSONResponse:
        body = problems.http_problem(exc.status, exc.kind, exc.detail, exc.hint)
        return _problem(request, body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        body = problems.problem(errors.SpecError(f"bad request: {where}"))
        return _problem(request, body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = problems.http_problem(exc.status_code, "HTTPError", str(exc.detail))
        return _problem(request, body, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
        body = problems.http_problem(
            500, "InternalError", f"unexpected {type(exc).__name__}",
            hint="the server's log has the traceback",
        )  # fmt: skip
        return _problem(request, body)


def _health(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> JSONResponse:
        """The store answers (readiness): 503 with the reason otherwise."""
        try:
            await run_in_threadpool(_ping_store)
        except Exception as exc:
            body = problems.http_problem(
                503, "StoreUnavailable", f"the state store does not answer: {exc}",
                hint="check --database-url / MLCLOUD_HOME and the database server",
            )  # fmt: skip
            return _problem(request, body)
        return JSONResponse({"status": "ready"})


def _ping_store() -> None:
    """Open the store afresh (not a pooled handle that may outlive the database) and read."""
    store = Store.open()
    try:
        store._db.execute("SELECT 1").fetchone()
    finally:
        store.close()
