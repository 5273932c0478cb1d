"""boto3 clients, created once per provider instance (boto3 itself is imported here, lazily).

boto3 ships no type information here, so the clients are ``Any``: each call's request and
answer shapes are botocore's service model (the plans are checked against it in the tests).
"""

from __future__ import annotations

import threading
from typing import Any

from providers.sagemaker.settings import SageMakerSettings

_loader_lock = threading.Lock()
_shared_loader: Any = None


def _botocore_session(aws_profile: str | None) -> Any:
    """A fresh botocore session (own credentials/config) sharing one parsed-model loader, so a
    second provider in the same process does not re-read the large service JSON files."""
    import botocore.session

    global _shared_loader
    session = botocore.session.Session(profile=aws_profile)
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _shared_loader)
    return session


class Clients:
    """One boto3 session and one client per service, shared by every call of a provider.

    botocore's "standard" retry mode is the only retry of API calls. ``endpoint_url`` from the
    profile applies to every service; otherwise boto3 honours AWS_ENDPOINT_URL and
    AWS_ENDPOINT_URL_<SERVICE> (and AWS_PROFILE) by itself.
    """

    def __init__(self, settings: SageMakerSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[str, Any] = {}

    @property
    def region(self) -> str:
        return self._settings.resolved_region()

    def get(self, service: str) -> Any:
        with self._lock:
            client = self._clients.get(service)
            if client is None:
                client = self._make(service)
                self._clients[service] = client
            return client

    def _make(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        if self._session is None:
            self._session = boto3.session.Session(
                botocore_session=_botocore_session(self._settings.aws_profile),
                region_name=self.region,
            )
        config = Config(
            retries={"mode": "standard", "max_attempts": self._settings.max_attempts},
            user_agent_extra="mlcloud",
        )
        # endpoint_url=None: boto3's own resolution (AWS_ENDPOINT_URL[_<SERVICE>], then AWS).
        return self._session.client(
            service, config=config, endpoint_url=self._settings.endpoint_url or None
        )

    @property
    def sagemaker(self) -> Any:
        return self.get("sagemaker")

    @property
    def runtime(self) -> Any:
        return self.get("sagemaker-runtime")

    @property
    def s3(self) -> Any:
        return self.get("s3")

    @property
    def logs(self) -> Any:
        return self.get("logs")

    @property
    def autoscaling(self) -> Any:
        return self.get("application-autoscaling")
