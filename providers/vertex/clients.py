"""The SDK clients of one provider instance, each created once, on first use.

All Vertex services go through the GAPIC REST transport: it is the path the tests exercise against
the fake, and it avoids loading gRPC. An ``http://`` endpoint (a local fake or emulator) gets
anonymous credentials: a bearer token must never travel in clear text. This is the test seam:
``api_endpoint`` / ``storage_endpoint`` / ``logging_endpoint`` in the profile point every client
at a local server.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from mlcloud.errors import ProviderUnavailable
from providers.vertex.settings import VertexSettings

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud.aiplatform_v1 import (
        EndpointServiceClient,
        JobServiceClient,
        ModelServiceClient,
        PredictionServiceClient,
    )

INSTALL = 'pip install "mlcloud[gcp]"'


class LogEntry(Protocol):
    """What mlcloud reads of a ``google.cloud.logging_v2`` entry (the package is unannotated)."""

    @property
    def insert_id(self) -> str | None: ...
    @property
    def timestamp(self) -> dt.datetime | None: ...
    @property
    def payload(self) -> object: ...


class LogEntries(Protocol):
    """What mlcloud calls of ``google.cloud.logging_v2.client.Client``."""

    def list_entries(
        self, *, resource_names: list[str], filter_: str, order_by: str, page_size: int
    ) -> Iterable[LogEntry]: ...


class Clients:
    def __init__(self, settings: VertexSettings) -> None:
        self.settings = settings

    @cached_property
    def credentials(self) -> Credentials:
        if self.settings.local_endpoint:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()  # type: ignore[no-untyped-call]  # unannotated SDK
        import google.auth

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return creds

    @property
    def api_endpoint(self) -> str:
        return self.settings.api_endpoint or f"{self.settings.location}-aiplatform.googleapis.com"

    def _require_aiplatform(self) -> None:
        try:
            import google.cloud.aiplatform_v1  # noqa: F401
        except ImportError as err:
            raise ProviderUnavailable("vertex", INSTALL, str(err)) from None

    @cached_property
    def jobs(self) -> JobServiceClient:
        self._require_aiplatform()
        from google.cloud.aiplatform_v1 import JobServiceClient

        return JobServiceClient(
            credentials=self.credentials,
            transport="rest",
            client_options={"api_endpoint": self.api_endpoint},
        )

    @cached_property
    def models(self) -> ModelServiceClient:
        self._require_aiplatform()
        from google.cloud.aiplatform_v1 import ModelServiceClient

        return ModelServiceClient(
            credentials=self.credentials,
            transport="rest",
            client_options={"api_endpoint": self.api_endpoint},
        )

    @cached_property
    def endpoints(self) -> EndpointServiceClient:
        self._require_aiplatform()
        from google.cloud.aiplatform_v1 import EndpointServiceClient

        return EndpointServiceClient(
            credentials=self.credentials,
            transport="rest",
            client_options={"api_endpoint": self.api_endpoint},
        )

    @cached_property
    def prediction(self) -> PredictionServiceClient:
        self._require_aiplatform()
        from google.cloud.aiplatform_v1 import PredictionServiceClient

        return PredictionServiceClient(
            credentials=self.credentials,
            transport="rest",
            client_options={"api_endpoint": self.api_endpoint},
        )

    @cached_property
    def storage(self) -> Any:
        """A google-cloud-storage client (the package ships no type information)."""
        try:
            from google.cloud.storage import Client
        except ImportError as err:
            raise ProviderUnavailable("vertex", INSTALL, str(err)) from None
        options = {"api_endpoint": self.settings.storage_endpoint}
        return Client(
            project=self.settings.project,
            credentials=self.credentials,
            client_options=options if self.settings.storage_endpoint else None,
        )

    @cached_property
    def bucket(self) -> Any:
        return self.storage.bucket(self.settings.bucket)

    @cached_property
    def logging(self) -> LogEntries:
        """A Cloud Logging client, or ProviderUnavailable naming the missing package."""
        try:
            from google.cloud.logging_v2.client import Client
        except ImportError as err:
            raise ProviderUnavailable(
                "vertex logs", 'pip install "mlcloud[gcp]" (google-cloud-logging)', str(err)
            ) from None
        options = {"api_endpoint": self.settings.logging_endpoint}
        return Client(  # type: ignore[no-untyped-call]  # unannotated SDK
            project=self.settings.project,
            credentials=self.credentials,
            _use_grpc=False,
            client_options=options if self.settings.logging_endpoint else None,
        )
