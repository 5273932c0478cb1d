"""azure-core exceptions → the mlcloud error tree (one module: providers/azureml/errors.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
)

from mlcloud.errors import (
    AuthError,
    Conflict,
    NotFound,
    Origin,
    PermissionDenied,
    ProviderError,
    QuotaExceeded,
    Throttled,
    Transient,
)
from mlcloud.specs import TrainingJob
from mlcloud.store import Store
from providers.azureml.errors import translate
from tests.fakes.azureml import Installed
from tests.providers.azureml.conftest import make_provider, write_source


class _Response:
    """Just what HttpResponseError reads from a response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status_code = status
        self.reason = "Error"
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        self.content_type = "application/json"
        self.request = None
        self._text = json.dumps({"error": {"code": code, "message": message}})

    def text(self, encoding: str | None = None) -> str:
        return self._text

    def body(self) -> bytes:
        return self._text.encode()


ORIGIN = Origin("azureml", "azure")


def _http(status: int, code: str, message: str = "m", cls: type = HttpResponseError) -> Exception:
    return cls(response=_Response(status, code, message))


@pytest.mark.parametrize(
    ("err", "expected", "retryable"),
    [
        (_http(404, "NotFound", cls=ResourceNotFoundError), NotFound, False),
        (_http(409, "Conflict", cls=ResourceExistsError), Conflict, False),
        (_http(401, "InvalidAuthenticationToken"), AuthError, False),
        (_http(403, "AuthorizationFailed"), PermissionDenied, False),
        (_http(429, "TooManyRequests"), Throttled, True),
        (_http(400, "QuotaExceeded", "core quota reached"), QuotaExceeded, False),
        (_http(503, "ServiceUnavailable"), Transient, True),
        (_http(400, "UserError", "bad field"), ProviderError, False),
        (ServiceRequestError("connection reset"), Transient, True),
        (ClientAuthenticationError("no credential"), AuthError, False),
    ],
)
def test_translate(err: Exception, expected: type, retryable: bool) -> None:
    mapped = translate(err, ORIGIN)
    assert type(mapped) is expected
    assert isinstance(mapped, ProviderError) and mapped.retryable is retryable
    assert (mapped.provider_type, mapped.profile) == ("azureml", "azure")


def test_quota_names_the_code_and_hides_secrets() -> None:
    err = translate(_http(400, "QuotaExceeded", "no cores; see https://x?sig=abc123&key=k"), ORIGIN)
    assert isinstance(err, QuotaExceeded) and err.quota == "QuotaExceeded" and err.hint
    assert "abc123" not in str(err) and "sig=***" in str(err)


class _NoCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")


def test_missing_credentials_through_the_real_client(
    azure: Installed, store: Store, tmp_path: Path
) -> None:
    from mlcloud.config import Profile
    from providers.azureml import AzureMLProvider
    from tests.providers.azureml.conftest import SETTINGS

    provider = AzureMLProvider(
        Profile("azure", "azureml", dict(SETTINGS)), store, credential=_NoCredential()
    )
    job = TrainingJob(name="t", source=str(write_source(tmp_path)), command=["python", "x.py"],
                      framework={"name": "sklearn", "version": "1.5"})  # fmt: skip
    with pytest.raises(AuthError) as err:
        provider.submit_job(provider.plan_job(job))
    assert "az login" in str(err.value.hint)
    assert store.list_jobs() == []


def test_the_client_is_built_once(azure: Installed, store: Store, tmp_path: Path) -> None:
    provider = make_provider(store)
    assert "clients" not in vars(provider)  # nothing built until the first call
    assert provider.clients is provider.clients
    assert provider.clients.ml is provider.clients.ml


def test_missing_sdk_is_provider_unavailable(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from mlcloud.errors import ProviderUnavailable

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "azure.ai.ml" else real(n, *a)
    )
    with pytest.raises(ProviderUnavailable) as err:
        make_provider(store)
    assert "mlcloud[azure]" in str(err.value.hint)
