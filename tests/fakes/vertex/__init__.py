"""A fake Vertex AI + Cloud Storage + Cloud Logging server on 127.0.0.1 for the real SDK clients.

Use :func:`running` (a context manager) or :class:`FakeVertex` with ``start``/``stop``::

    with running() as fake:
        client = JobServiceClient(transport="rest", credentials=AnonymousCredentials(),
                                  client_options={"api_endpoint": fake.url})

The GCS JSON-API routes live in the same server (``storage_endpoint: fake.url``), as does
Cloud Logging's ``entries:list`` (``logging_endpoint: fake.url``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.fakes.vertex.models_api import ModelsApi
from tests.fakes.vertex.server import ApiError, Injected, Server, Storage
from tests.fakes.vertex.vertex_api import VertexApi


class FakeVertex:
    def __init__(self) -> None:
        self.storage = Storage()
        self.vertex = VertexApi(self.storage)
        self.models = ModelsApi(self.vertex)  # model versions and aliases, on vertex's state
        self.server = Server([self.storage, self.models, self.vertex])

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> FakeVertex:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()
        self.vertex.workdir.cleanup()

    def inject(
        self,
        method: str,
        path_regex: str,
        status: str,
        message: str = "injected",
        *,
        details: list[dict[str, Any]] | None = None,
        times: int = 1,
        after_handling: bool = False,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Make the next ``times`` matching requests fail with ``status``."""
        with self.server.lock:
            self.server.injected.append(
                Injected(
                    method,
                    re.compile(path_regex),
                    ApiError(status, message, details),
                    times,
                    after_handling,
                    then,
                )
            )


@contextmanager
def running() -> Iterator[FakeVertex]:
    fake = FakeVertex().start()
    try:
        yield fake
    finally:
        fake.stop()


__all__ = ["ApiError", "FakeVertex", "running"]
