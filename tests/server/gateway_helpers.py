"""The server app under a real uvicorn on 127.0.0.1, in a thread of the test process.

The cloud gateway tests need it in-process: their far ends are wired into this process (moto's
handlers patched here, the Azure ML fake under the SDK's transport). The local endpoint tests
use the real ``mlcloud server`` subprocess instead (``serverproc.start_server``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from mlcloud.server.app import create_app
from mlcloud.server.gateway import GatewayConfig
from mlcloud.server.settings import Settings


@contextmanager
def app_server(config: GatewayConfig | None = None, **settings: Any) -> Iterator[str]:
    """Serve ``create_app`` on a free loopback port until the block ends; yields its URL."""
    import uvicorn

    app = create_app(Settings(host="127.0.0.1", **settings))
    if config is not None:
        app.state.gateway_config = config
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="gateway-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def predict(
    url: str, name: str, body: bytes, *, token: str | None = None, **headers: str
) -> httpx.Response:
    """POST ``body`` to the gateway's predict route of endpoint ``name``."""
    sent = {"content-type": "application/json", **headers}
    if token:
        sent["authorization"] = f"Bearer {token}"
    return httpx.post(f"{url}/v1/endpoints/{name}:predict", content=body, headers=sent, timeout=60)
