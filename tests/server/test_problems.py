"""Problem JSON ↔ MlcloudError: every class of the error tree survives the round trip through
the server's rendering and the client's rebuilding (class, message, hint, attributes), and the
status follows the CLI's exit-code rule."""

from __future__ import annotations

import json

import pytest

from mlcloud import errors
from mlcloud.cli.core import EXIT_BAD_INPUT, exit_code
from mlcloud.client import error_from_problem
from mlcloud.server.problems import problem, status_for

PROVIDER_ERRORS = [errors.ProviderError, errors.AuthError, errors.PermissionDenied,
                   errors.NotFound, errors.Conflict, errors.QuotaExceeded, errors.Throttled,
                   errors.Transient]  # fmt: skip
PLAIN = [errors.MlcloudError, errors.ConfigError, errors.SpecError, errors.NotFoundLocally,
         errors.ModelError, errors.ShadowedPackage]  # fmt: skip
#: a backend's refusal keeps its HTTP meaning although the CLI counts it as a failure (exit 1)
HTTP_4XX_FAILURES = {errors.Conflict: 409, errors.Throttled: 429}


def examples() -> list[errors.MlcloudError]:
    made: list[errors.MlcloudError] = [cls("it went wrong", hint="do this") for cls in PLAIN]
    made += [cls("the cloud said no", provider_type="sagemaker", profile="aws", code="X",
                 hint="try that") for cls in PROVIDER_ERRORS]  # fmt: skip
    made.append(errors.UnsupportedFeature("spot", "local", hint="drop spot"))
    made.append(errors.ProviderUnavailable("vertex", "pip install 'mlcloud[gcp]'", "no module"))
    return made


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_round_trip(error: errors.MlcloudError) -> None:
    body = json.loads(json.dumps(problem(error, "/v1/x")))  # what goes over the wire
    assert body["kind"] == type(error).__name__ and body["title"] == body["kind"]
    assert (body["detail"], body["hint"], body["instance"]) == (error.message, error.hint, "/v1/x")
    back = error_from_problem(body, body["status"])
    assert type(back) is type(error)
    assert (str(back), back.hint) == (str(error), error.hint)
    for name in ("provider_type", "profile", "code", "retryable", "feature", "provider", "install"):
        assert getattr(back, name, None) == getattr(error, name, None), name
    assert exit_code(back) == exit_code(error)  # the CLI exits the same way either way


@pytest.mark.parametrize("error", examples(), ids=lambda e: type(e).__name__)
def test_status_follows_exit_code_rule(error: errors.MlcloudError) -> None:
    status = status_for(error)
    if type(error) in HTTP_4XX_FAILURES:
        assert status == HTTP_4XX_FAILURES[type(error)]
    elif exit_code(error) == EXIT_BAD_INPUT:
        assert 400 <= status < 500
    else:
        assert 500 <= status < 600


def test_unknown_subclass_becomes_nearest_known() -> None:
    class StoreGone(errors.NotFoundLocally):
        pass

    body = problem(StoreGone("gone", hint="h"))
    assert body["kinds"] == ["StoreGone", "NotFoundLocally", "MlcloudError"]
    back = error_from_problem(body, 404)
    assert type(back) is errors.NotFoundLocally and back.hint == "h"
