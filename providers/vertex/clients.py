"""The SDK clients of one provider instance, each created once, on first use.

All Vertex services go through the GAPIC REST transport: it is the path the tests exercise against
the fake, and it avoids loading gRPC. An ``http://`` endpoint (a local fake or emulator) gets
anonymous credentials: a bearer token must never travel in clear text.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from mlcloud.errors import ProviderUnavailable
from providers.vertex.errors import mapped
from providers.vertex.settings import VertexSettings

INSTALL = 'pip install "mlcloud[gcp]"'


class Clients:
    def __init__(self, settings: VertexSettings) -> None:
        self.settings = settings

    @cached_property
    def credentials(self) -> Any:
        if self.settings.local_endpoint:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()  # type: ignore[no-untyped-call]
        import google.auth

        with mapped("loading Google credentials"):
            creds, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
        return creds

    @property
    def api_endpoint(self) -> str:
        return self.settings.api_endpoint or f"{self.settings.location}-aiplatform.googleapis.com"

    def _gapic(self, name: str) -> Any:
        try:
            from google.cloud import aiplatform_v1
        except ImportError as err:
            raise ProviderUnavailable("vertex", INSTALL, str(err)) from None
        cls = getattr(aiplatform_v1, name)
        return cls(
            credentials=self.credentials,
            transport="rest",
            client_options={"api_endpoint": self.api_endpoint},
        )

    @cached_property
    def jobs(self) -> Any:
        return self._gapic("JobServiceClient")

    @cached_property
    def models(self) -> Any:
        return self._gapic("ModelServiceClient")

    @cached_property
    def endpoints(self) -> Any:
        return self._gapic("EndpointServiceClient")

    @cached_property
    def prediction(self) -> Any:
        return self._gapic("PredictionServiceClient")

    @cached_property
    def storage(self) -> Any:
        try:
            from google.cloud import storage  # type: ignore[attr-defined]
        except ImportError as err:
            raise ProviderUnavailable("vertex", INSTALL, str(err)) from None
        options = {"api_endpoint": self.settings.storage_endpoint}
        return storage.Client(
            project=self.settings.project,
            credentials=self.credentials,
            client_options=options if self.settings.storage_endpoint else None,
        )

    @cached_property
    def bucket(self) -> Any:
        return self.storage.bucket(self.settings.bucket)

    @cached_property
    def logging(self) -> Any:
        """A Cloud Logging client, or ProviderUnavailable naming the missing package."""
        try:
            from google.cloud.logging_v2.client import Client
        except ImportError as err:
            raise ProviderUnavailable(
                "vertex logs", 'pip install "mlcloud[gcp]" (google-cloud-logging)', str(err)
            ) from None
        options = {"api_endpoint": self.settings.logging_endpoint}
        return Client(  # type: ignore[no-untyped-call]
            project=self.settings.project,
            credentials=self.credentials,
            _use_grpc=False,
            client_options=options if self.settings.logging_endpoint else None,
        )
