"""A fake Azure ML workspace behind the real ``MLClient``, in-process (no sockets).

``install(monkeypatch)`` wires it up: the provider's client hook gets a fake TokenCredential and
a :class:`FakeTransport`, and azure-ai-ml's blob upload helper (which builds its own
azure-storage-blob clients without passing transport options through) is given the same
transport, so code and input uploads run the real azure-storage-blob client against the fake
blob handler in :mod:`tests.fakes.azureml.service` (not Azurite).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.fakes.azureml.service import FakeAzureML
from tests.fakes.azureml.transport import FakeCredential, FakeTransport


@dataclass
class Installed:
    fake: FakeAzureML
    transport: FakeTransport
    credential: FakeCredential


def install(monkeypatch: pytest.MonkeyPatch, fake: FakeAzureML | None = None) -> Installed:
    """Wire the fake under the provider (undone with ``monkeypatch``; call ``fake.close()``)."""
    import azure.ai.ml._artifacts._blob_storage_helper as blob_helper
    from azure.storage.blob import BlobServiceClient, ContainerClient

    from providers.azureml import clients

    fake = fake or FakeAzureML()
    transport = FakeTransport(fake)
    credential = FakeCredential()

    class RoutedServiceClient(BlobServiceClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, transport=transport, **kwargs)

    class RoutedContainerClient(ContainerClient):
        @classmethod
        def from_container_url(
            cls, container_url: str, credential: Any = None, **kwargs: Any
        ) -> Any:
            return ContainerClient.from_container_url.__func__(  # type: ignore[attr-defined]
                cls, container_url, credential=credential, transport=transport, **kwargs
            )

    monkeypatch.setattr(blob_helper, "BlobServiceClient", RoutedServiceClient)
    monkeypatch.setattr(blob_helper, "ContainerClient", RoutedContainerClient)
    monkeypatch.setattr(clients, "OVERRIDES", clients.Overrides(credential, transport))
    return Installed(fake, transport, credential)
