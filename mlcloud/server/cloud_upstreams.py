"""Predict on a cloud endpoint through its provider's own SDK client, which holds the
credentials (the caller never sees them). Blocking: the gateway runs these in a worker thread.

Each answers an :class:`~mlcloud.server.upstreams.Answer` attributed to the version that
served it, as the cloud says it:

* SageMaker InvokeEndpoint: the ``x-amzn-invoked-production-variant`` header (boto3's
  ``InvokedProductionVariant``); a model's own error (``ModelError``) keeps its status when it
  is the caller's (4xx), else the gateway answers 502.
* Vertex Predict: ``deployedModelId`` in the answer (the proto has no raw passthrough: the JSON
  is parsed into a ``PredictRequest`` and the answer written back as Vertex's REST JSON).
* Azure ML scoring URI: the ``azureml-model-deployment`` header; the endpoint's scoring URI and
  key are asked once per cached target and the request is sent on the SDK's own HTTP pipeline
  (its transport, proxies and credentials), as ``online_endpoints.invoke`` does but with the
  response's status and headers kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

from mlcloud.server.upstreams import Answer, Target, UpstreamFailure, classify, passed_headers

AZURE_DEPLOYMENT_HEADER = "azureml-model-deployment"
_JSON = [("content-type", "application/json")]


def invoke(target: Target, body: bytes, content_type: str, timeout: float) -> Answer:
    """Predict on ``target`` (a SageMaker, Vertex or Azure ML endpoint)."""
    call: dict[str, Callable[[Target, bytes, str, float], Answer]] = {
        "sagemaker": _sagemaker,
        "vertex": _vertex,
        "azureml": _azureml,
    }
    return call[target.type](target, body, content_type, timeout)


def _clients(target: Target) -> Any:
    return cast(Any, target.provider).clients


# ---- SageMaker ------------------------------------------------------------------------------
def _sagemaker(target: Target, body: bytes, content_type: str, timeout: float) -> Answer:
    runtime = _clients(target).runtime
    try:
        resp = runtime.invoke_endpoint(
            EndpointName=target.name, ContentType=content_type, Accept="application/json",
            Body=body,
        )  # fmt: skip
    except Exception as exc:
        return _aws_error(target, exc)
    data = resp["Body"].read()
    version = resp.get("InvokedProductionVariant") or target.fallback_version
    return Answer(200, [("content-type", resp.get("ContentType") or "application/json")], data,
                  version)  # fmt: skip


def _aws_error(target: Target, exc: Exception) -> Answer:
    """A model's 4xx answer passed on; anything else an ``UpstreamFailure``."""
    name = type(exc).__name__
    if name in ("ReadTimeoutError", "ConnectTimeoutError"):
        raise UpstreamFailure(504, "UpstreamTimeout", f"{_where(target)}: {exc}") from None
    if name in ("EndpointConnectionError", "ConnectionClosedError", "ProxyConnectionError"):
        raise UpstreamFailure(502, "UpstreamUnreachable", f"{_where(target)}: {exc}") from None
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        raise exc
    error, meta = response.get("Error") or {}, response.get("ResponseMetadata") or {}
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    headers = meta.get("HTTPHeaders") or {}
    version = headers.get("x-amzn-invoked-production-variant") or target.fallback_version
    if code == "ModelError":
        status = int(response.get("OriginalStatusCode") or 500)
        original = str(response.get("OriginalMessage") or message)
        if classify(status) is None:  # the model refused the caller's request
            return Answer(status, _JSON, _json_or_error(original), version)
        raise UpstreamFailure(*(classify(status) or (502, "UpstreamError")),
                              f"{_where(target)}: the model answered {status}: {original[:500]}",
                              version=version, upstream_status=status)  # fmt: skip
    if code == "ValidationError" and "not found" not in message:
        return Answer(400, _JSON, json.dumps({"error": message}).encode(), version)
    status = int(meta.get("HTTPStatusCode") or 502)
    if code in ("ThrottlingException", "ModelNotReadyException", "ServiceUnavailable"):
        raise UpstreamFailure(503, "UpstreamUnavailable", f"{_where(target)}: {code}: {message}",
                              upstream_status=status, retry_after=1)  # fmt: skip
    raise UpstreamFailure(502, "UpstreamError", f"{_where(target)}: {code}: {message}",
                          upstream_status=status)  # fmt: skip


def _json_or_error(text: str) -> bytes:
    try:
        json.loads(text)
        return text.encode()
    except ValueError:
        return json.dumps({"error": text}).encode()


# ---- Vertex AI ------------------------------------------------------------------------------
def _vertex(target: Target, body: bytes, content_type: str, timeout: float) -> Answer:
    from google.cloud import aiplatform_v1

    request = _vertex_request(target, body)
    try:
        proto = aiplatform_v1.PredictRequest.from_json(json.dumps(request))
    except Exception as exc:  # the proto refuses it: the caller's request
        return _bad_request(f"not a Vertex predict request: {exc}", target)
    try:
        resp = _clients(target).prediction.predict(request=proto, timeout=timeout)
    except Exception as exc:
        return _google_error(target, exc)
    text = type(resp).to_json(resp, indent=None, use_integers_for_enums=False)
    answer = json.loads(text)
    version = str(answer.get("deployedModelId") or target.fallback_version)
    return Answer(200, _JSON, text.encode(), version)


def _vertex_request(target: Target, body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise UpstreamFailure(400, "SpecError", f"the request body is not JSON: {exc}") from None
    instances = payload.get("instances") if isinstance(payload, dict) else payload
    if not isinstance(instances, list) or not instances:
        raise UpstreamFailure(
            400, "SpecError", 'expected {"instances": [...]} with at least one instance'
        )
    request: dict[str, Any] = {"endpoint": target.record.native_id, "instances": instances}
    if isinstance(payload, dict) and "parameters" in payload:
        request["parameters"] = payload["parameters"]
    return request


def _google_error(target: Target, exc: Exception) -> Answer:
    name = type(exc).__name__
    code = getattr(exc, "code", None)
    status = int(code) if isinstance(code, (int, HTTPStatus)) else None
    message = str(getattr(exc, "message", "") or exc)
    what = f"{_where(target)}: {name}: {message[:500]}"
    if name in ("DeadlineExceeded", "RetryError", "Timeout", "ReadTimeout", "ConnectTimeout"):
        raise UpstreamFailure(504, "UpstreamTimeout", what) from None
    if name in ("InvalidArgument", "BadRequest", "OutOfRange"):
        return _bad_request(message, target)
    if name in ("FailedPrecondition", "ServiceUnavailable", "TooManyRequests"):
        raise UpstreamFailure(503, "UpstreamUnavailable", what, upstream_status=status,
                              retry_after=1) from None  # fmt: skip
    if status is None:
        kind = "UpstreamUnreachable" if "Connection" in name else "UpstreamError"
        raise UpstreamFailure(502, kind, what) from None
    raise UpstreamFailure(502, "UpstreamError", what, upstream_status=status) from None


def _bad_request(message: str, target: Target) -> Answer:
    body = json.dumps({"error": message})
    return Answer(400, _JSON, body.encode(), target.fallback_version)


# ---- Azure ML -------------------------------------------------------------------------------
def _azureml(target: Target, body: bytes, content_type: str, timeout: float) -> Answer:
    ops = _clients(target).ml.online_endpoints
    uri, key = _azure_scoring(target, ops)
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        # the SDK's pipeline (transport, proxies); no retries: the caller decides
        resp = ops._requests_pipeline.post(
            uri, data=body, headers=headers, retry_total=0, connection_timeout=timeout,
            read_timeout=timeout,
        )  # fmt: skip
    except Exception as exc:
        name = type(exc).__name__
        kind, status = ("UpstreamTimeout", 504) if "Timeout" in name else ("UpstreamUnreachable",
                                                                           502)  # fmt: skip
        raise UpstreamFailure(status, kind, f"{_where(target)}: {name}: {exc}") from None
    data = resp.body()
    version = resp.headers.get(AZURE_DEPLOYMENT_HEADER) or target.fallback_version
    if resp.status_code in (401, 403):
        target.cache.pop("scoring", None)  # a rotated key: ask again next time
    failure = classify(resp.status_code)
    if failure is None:
        return Answer(resp.status_code, passed_headers(resp.headers.items()), data, version)
    if resp.status_code == 424:  # Azure ML: the model's container failed
        failure = (502, "UpstreamError")
    raise UpstreamFailure(*failure,
                          f"{_where(target)}: answered {resp.status_code}: {data[:300]!r}",
                          version=version, upstream_status=resp.status_code)  # fmt: skip


def _azure_scoring(target: Target, ops: Any) -> tuple[str, str]:
    """The scoring URI and the key or token it takes (cached with the target)."""
    cached = target.cache.get("scoring")
    if cached is None:
        try:
            endpoint = ops.get(target.name)
            keys = ops.get_keys(target.name)
        except Exception as exc:
            raise UpstreamFailure(
                502, "UpstreamRefused", f"{_where(target)}: cannot get its scoring URI and key: "
                f"{type(exc).__name__}: {exc}",
            ) from None  # fmt: skip
        key = getattr(keys, "primary_key", None) or getattr(keys, "access_token", None) or ""
        cached = target.cache["scoring"] = (str(endpoint.scoring_uri), str(key))
    return cast(tuple[str, str], cached)


def _where(target: Target) -> str:
    return f"endpoint {target.name!r} ({target.type})"
