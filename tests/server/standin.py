"""Stand-ins for a local endpoint's parts, for the gateway tests that need no BentoML: model
servers (plain HTTP, one per version, each counting what it received and closing every
connection, so a stopped one refuses at once), the routing file, and the endpoint's real front
with its record."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlcloud.records import EndpointRecord, EndpointState
from mlcloud.store import Store
from providers.local.endpoint_plan import endpoint_dir
from providers.local.front import STATS_PATH, write_upstreams
from tests.conftest import REPO
from tests.server.serverproc import free_port


class Model:
    """A stand-in model server: answers which version it is, counts what it received."""

    def __init__(self, version: str) -> None:
        self.version, self.received = version, 0
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                model.received += 1
                answer = json.dumps({"predictions": [model.version]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(answer)
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # refused from now on


def publish(
    state: Path, generation: int, models: dict[str, Model], weights: dict[str, int]
) -> None:
    versions = {v: {"weight": w, "upstreams": [models[v].url]} for v, w in weights.items()}
    write_upstreams(state, generation, [m.url for m in models.values()], versions=versions)


@contextmanager
def running_front(
    home: Path, name: str, models: dict[str, Model], weights: dict[str, int]
) -> Iterator[int]:
    """Endpoint ``name``'s real front (loopback: no token) on ``weights``, and its record; its
    port."""
    state = endpoint_dir(home, name)
    state.mkdir(parents=True)
    publish(state, 1, models, weights)
    port = free_port()
    argv = [sys.executable, "-m", "providers.local.front", "--port", str(port), "--state-dir",
            str(state), "--log-file", str(state / "front.log")]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while get(port, STATS_PATH) is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the front did not start"
            time.sleep(0.05)
        front = {"host": "127.0.0.1", "port": port, "pid": proc.pid}
        store = Store.open(home)
        store.put_endpoint(
            EndpointRecord(
                name,
                "local",
                "local",
                EndpointState.READY,
                url=f"http://127.0.0.1:{port}",
                details={"front": front},
            )
        )
        store.close()  # fmt: skip
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def request_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A stand-in's request body, sized or chunked (the gateway's route streams a body it was
    sent unsized)."""
    if handler.headers["content-length"] is not None:
        return handler.rfile.read(int(handler.headers["content-length"]))
    chunks = []
    while size := int(handler.rfile.readline().split(b";")[0], 16):
        chunks.append(handler.rfile.read(size))
        handler.rfile.readline()
    handler.rfile.readline()
    return b"".join(chunks)


def get(port: int, path: str) -> Any:
    """The JSON a GET of ``path`` answers (``None`` unless 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()
