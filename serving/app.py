"""The FastAPI app mounted into the BentoML service: the JSON predict and probe routes.

Routes come from the serving contract (``/predict`` locally; ``/invocations`` + ``/ping`` on
SageMaker; the ``AIP_*`` routes on Vertex; ``/score``, ``/health`` and ``/`` on Azure ML). Every
error is a JSON ``{"error": ...}`` with a 4xx for anything the client sent wrong; a model failure
is a 500 without a traceback (the traceback goes to the server log).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.batching import MicroBatcher, Overloaded
from serving.capture import Capture
from serving.contracts import Contract
from serving.guard import render_metrics
from serving.inputs import (
    SAGEMAKER_TYPES,
    InputError,
    answer_type,
    extract_instances,
    parse_instances,
    parse_json,
    render,
)
from serving.loaders import Predictor

logger = logging.getLogger(__name__)

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {"instances": {"type": "array", "items": {}}},
                },
                "example": {"instances": [[5.1, 3.5, 1.4, 0.2]]},
            }
        },
    }
}


@dataclass
class State:
    """What the routes need; filled in by the service once the model is loaded."""

    predictor: Predictor | None = None
    batcher: MicroBatcher | None = None
    info: dict[str, Any] = field(default_factory=dict)
    max_body: int = 10 * 1024 * 1024
    workers: int = 1
    capture: Capture | None = None  # on when the deployment asks (serving/capture.py)
    version: str = ""  # the model version this server runs (MLCLOUD_SERVE_VERSION)

    @property
    def ready(self) -> bool:
        return self.predictor is not None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


#: the id of a request, echoed on its answer and kept with its captured record, so that
#: ground truth sent later (``mlcloud feedback``) joins the prediction; a caller may set it
REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128


def request_id(given: str | None) -> str:
    """The caller's id when it is a short printable token, else a new random one."""
    if given and len(given) <= _MAX_REQUEST_ID and given.isprintable() and " " not in given:
        return given
    return secrets.token_hex(16)


async def predict_json(state: State, body: bytes, rid: str = "") -> JSONResponse:
    """One JSON predict request: parse, validate, batch, answer."""
    try:
        instances = extract_instances(parse_json(body))
    except InputError as e:
        return _error(e.status, str(e))
    result = await predict_instances(state, instances, rid)
    return result if isinstance(result, JSONResponse) else JSONResponse({"predictions": result})


async def predict_media(
    state: State, body: bytes, media: str, accept: str, rid: str = ""
) -> Response:
    """SageMaker: JSON, CSV or JSON Lines in (one or many records), answered as ``Accept``
    asks or else in the request's own type."""
    try:
        instances = parse_instances(body, media)
    except InputError as e:
        return _error(e.status, str(e))
    result = await predict_instances(state, instances, rid)
    if isinstance(result, JSONResponse):
        return result
    out = answer_type(accept, media)
    return Response(render(result, out), media_type=out)


async def predict_instances(
    state: State, instances: list[Any], rid: str = ""
) -> list[Any] | JSONResponse:
    """Validate, batch and run ``instances``: the predictions, or the error to answer.
    A success is offered to the capture (sampled, queued, never waited on)."""
    predictor = state.predictor
    if predictor is None:
        return _error(503, "model is not loaded yet", {"Retry-After": "1"})
    try:
        batch = predictor.prepare(instances)
    except InputError as e:
        return _error(e.status, str(e))
    try:
        if state.batcher is not None:
            predictions: list[Any] = await state.batcher.submit(batch)
        else:
            predictions = await run_in_threadpool(predictor.run, batch)
    except Overloaded as e:
        return _error(503, f"server overloaded ({e}); retry later", {"Retry-After": "1"})
    except InputError as e:  # a custom predictor may reject input itself
        return _error(e.status, str(e))
    except Exception:
        logger.exception("prediction failed")
        return _error(500, "prediction failed; see the server log")
    if state.capture is not None:
        state.capture.offer(rid, instances, predictions)
    return predictions


def build_app(contract: Contract, state: State, *, metrics_route: bool = True) -> FastAPI:
    """The routes of ``contract`` on ``state``; ``metrics_route=False`` leaves out /metrics
    (BentoML's Prometheus registry: a Ray Serve replica has none, Ray exports its own)."""
    app = FastAPI(
        title="mlcloud model server",
        description=f"Serving contract: {contract.name}. Payload: "
        '{"instances": [...]} -> {"predictions": [...]}',
        docs_url="/docs",
        redoc_url=None,
    )

    async def predict(request: Request) -> Response:
        rid = request_id(request.headers.get(REQUEST_ID_HEADER))
        response: Response
        if contract.name == "sagemaker":  # the caller's content type is passed through
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            accept = request.headers.get("accept", "")
            response = await predict_media(state, await request.body(), media, accept, rid)
        else:
            response = await predict_json(state, await request.body(), rid)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    async def ready() -> Response:
        if state.ready:
            return JSONResponse({"status": "ready", **state.info})
        return _error(503, "model is not loaded yet", {"Retry-After": "1"})

    async def live() -> Response:
        return JSONResponse({"status": "alive"})

    async def prometheus() -> Response:
        body, media_type = await run_in_threadpool(render_metrics)
        return Response(body, media_type=media_type)

    if metrics_route:
        app.add_api_route("/metrics", prometheus, methods=["GET"], summary="Prometheus metrics")

    for route in dict.fromkeys((*contract.predict_routes, "/predict")):
        app.add_api_route(
            route, predict, methods=["POST"], summary="Predict", openapi_extra=_PREDICT_BODY
        )
    for route in contract.ready_routes:
        app.add_api_route(route, ready, methods=["GET"], summary="Readiness")
    for route in contract.live_routes:
        app.add_api_route(route, live, methods=["GET"], summary="Liveness")
    if "execution_parameters" in contract.extra:

        async def execution_parameters() -> Response:
            # SageMaker batch transform asks this before sending records; MULTI_RECORD holds:
            # a CSV or JSON Lines body of many records is many instances (predict_media).
            return JSONResponse(
                {
                    "MaxConcurrentTransforms": state.workers,
                    "BatchStrategy": "MULTI_RECORD",
                    "MaxPayloadInMB": max(1, state.max_body // (1024 * 1024)),
                }
            )

        app.add_api_route(contract.extra["execution_parameters"], execution_parameters)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return _error(422, f"invalid request: {exc.errors()}")

    return app


def media_routes(contract: Contract) -> dict[str, tuple[str, ...]]:
    """Routes that parse more than JSON (for GuardMiddleware): SageMaker's predict routes."""
    if contract.name != "sagemaker":
        return {}
    return {route: SAGEMAKER_TYPES for route in (*contract.predict_routes, "/predict")}
