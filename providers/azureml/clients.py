"""The one ``MLClient`` of a provider instance, built on first use, and the test seam.

The credential is azure-identity's ``DefaultAzureCredential`` (environment, workload or managed
identity, ``az login``); it is created on first use, held only in memory and never logged.
The far end is replaced by an azure-core transport: passed to the provider, or installed in
:data:`OVERRIDES` by tests, because the registry constructs providers with
``(profile, store)`` only.

Two reads have no public azure-ai-ml call (``jobs.stream`` uses the same private ones): a run's
details (its error and log files) and the text of a log file; they are wrapped here so the rest
of the provider never touches the SDK's private attributes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypedDict

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


class _ClientOptions(TypedDict, total=False):
    show_progress: bool
    enable_telemetry: bool
    transport: HttpTransport[Any, Any]


@dataclass(frozen=True)
class RunDetails:
    """What mlcloud reads from a run's history: its error message and its log files."""

    error: str | None
    log_files: dict[str, str]  # file name -> SAS URL


#: what the Azure SDKs logged (azure-identity tries ~6 credentials, logging each failure): kept
#: here for ``--debug`` and tests instead of ~15 lines on the terminal before mlcloud's error
SDK_LOG: collections.deque[str] = collections.deque(maxlen=200)


class _CaptureSdkLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        SDK_LOG.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def quiet_sdk() -> None:
    """azure-ai-ml warns about every experimental class it touches, and azure-identity logs
    every credential it tried: not the user's concern. Both are captured in SDK_LOG; the
    failure itself reaches the user as one mapped error (errors.py) with its hint. A program
    that configured logging still gets the records (they propagate)."""
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    azure = logging.getLogger("azure")
    if not any(isinstance(h, _CaptureSdkLog) for h in azure.handlers):
        # a handler in the chain keeps logging's last-resort stderr printer from firing
        azure.addHandler(_CaptureSdkLog(logging.WARNING))


@contextlib.contextmanager
def sdk_output_to_stderr() -> Iterator[None]:
    """Whatever the SDK prints while uploading or polling goes to stderr: stdout is where
    ``--output json`` goes."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


class AzureClients:
    """The MLClient of one profile, built on first use (importing azure-ai-ml takes ~1.7 s)."""

    def __init__(
        self,
        settings: AzureMLSettings,
        credential: TokenCredential | None = None,
        transport: HttpTransport[Any, Any] | None = None,
    ) -> None:
        self.settings = settings
        self._credential = credential
        self._transport = transport

    @cached_property
    def ml(self) -> MLClient:
        from azure.ai.ml import MLClient

        quiet_sdk()
        credential = self._credential or OVERRIDES.credential
        transport = self._transport or OVERRIDES.transport
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        options = _ClientOptions(show_progress=False, enable_telemetry=False)
        if transport is not None:
            options["transport"] = transport
        return MLClient(
            credential,
            subscription_id=self.settings.subscription_id,
            resource_group_name=self.settings.resource_group,
            workspace_name=self.settings.workspace,
            **options,
        )

    def run_details(self, native_id: str) -> RunDetails:
        """The run history's details of one job run (raises the SDK's errors)."""
        details = self.ml.jobs._runs_operations.get_run_details(native_id)
        error = getattr(getattr(details, "error", None), "error", None)
        message = getattr(error, "message", None)
        files = getattr(details, "log_files", None) or {}
        return RunDetails(
            str(message) if message else None, {str(k): str(v) for k, v in files.items()}
        )

    def download_text(self, url: str) -> str:
        """A log file's text, through the MLClient's own pipeline (azure-core retries)."""
        from azure.ai.ml._utils.utils import download_text_from_url

        text: str = download_text_from_url(url, self.ml._requests_pipeline, timeout=60)
        return text
