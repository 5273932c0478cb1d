"""Start the server under uvicorn (``mlcloud server``)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile

from mlcloud.server.settings import Settings

APP_FACTORY = "mlcloud.server.app:create_app"


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM; then in-flight requests get ``graceful_timeout_s`` to finish.

    The settings reach each worker through the environment (uvicorn imports the factory by
    name in every worker process); the refusal to bind beyond loopback without a token is
    checked here first, so it is one clear error, not one per worker."""
    from mlcloud.server.auth import check_startup

    if settings.database_url:
        os.environ["MLCLOUD_DATABASE_URL"] = settings.database_url
    check_startup(settings)
    os.environ.update(settings.to_env())
    # the processes the server starts (pipeline runners) hand their rollouts to the server,
    # whose gateway sees the predictions (mlcloud.rollouts.stats)
    from mlcloud.rollouts.stats import HANDOFF_ENV

    os.environ[HANDOFF_ENV] = "1"
    shared = None
    if settings.workers > 1:  # the workers' numbers, added up by each (metrics_shared)
        from mlcloud.server.metrics_shared import SHARE_ENV

        shared = tempfile.mkdtemp(prefix="mlcloud-server-metrics-")
        os.environ[SHARE_ENV] = shared
    try:
        _run(settings)
    finally:
        if shared is not None:
            shutil.rmtree(shared, ignore_errors=True)


def _run(settings: Settings) -> None:
    import uvicorn

    from mlcloud.server.observe import log_config

    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=log_config(settings.log_level),
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        server_header=False,
        proxy_headers=False,
        http=_http(),
    )


def _http() -> type[asyncio.Protocol] | str:
    """uvicorn's protocol with predictions answered on it (:mod:`.predict_protocol`), when
    httptools is installed; else uvicorn's choice."""
    try:
        from mlcloud.server.predict_protocol import http_protocol
    except ImportError as exc:
        logging.getLogger("mlcloud.server").warning("predictions take the ASGI path: %s", exc)
        return "auto"
    return http_protocol()
