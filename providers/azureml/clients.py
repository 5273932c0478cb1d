"""The one ``MLClient`` of a provider instance, and the test hook that replaces its far end.

The credential is azure-identity's ``DefaultAzureCredential`` (environment, workload or managed
identity, ``az login``); it is created on first use, held only in memory and never logged.
Tests install :data:`OVERRIDES` (a fake TokenCredential and an azure-core transport) because
the registry constructs providers with ``(profile, store)`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.transport import HttpTransport

    from providers.azureml.settings import AzureMLSettings


@dataclass
class Overrides:
    credential: TokenCredential | None = None
    transport: HttpTransport[Any, Any] | None = None


OVERRIDES = Overrides()


def quiet_sdk() -> None:
    """azure-ai-ml warns about every experimental class it touches; not the user's concern."""
    import logging

    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)


def make_client(
    settings: AzureMLSettings,
    credential: TokenCredential | None = None,
    transport: HttpTransport[Any, Any] | None = None,
) -> MLClient:
    from azure.ai.ml import MLClient

    quiet_sdk()
    credential = credential or OVERRIDES.credential
    transport = transport or OVERRIDES.transport
    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    kwargs: dict[str, Any] = {"show_progress": False, "enable_telemetry": False}
    if transport is not None:
        kwargs["transport"] = transport
    return MLClient(
        credential,
        subscription_id=settings.subscription_id,
        resource_group_name=settings.resource_group,
        workspace_name=settings.workspace,
        **kwargs,
    )
