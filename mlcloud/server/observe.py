"""Structured (JSON) logs and the audit log of every mutating call.

One ASGI middleware sees every request: it writes one JSON access line (method, path, status,
milliseconds, who) and, for a mutating call (POST/PUT/PATCH/DELETE, predict excepted: it changes
nothing), one audit entry in the store *before* the response's last byte is sent, so a client
that got its answer can already read the entry. Neither ever holds a header, a body or a token.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlcloud.server.auth import ANONYMOUS, thread_store
from mlcloud.store import auth as token_store

log = logging.getLogger("mlcloud.server")
access = logging.getLogger("mlcloud.server.access")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_STD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` (uvicorn's ``log_config``): every logger, uvicorn's
    included, as JSON lines on stderr; uvicorn's own access log is off (ours replaces it)."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "WARNING"},
        },
    }


def setup_logging(level: str = "info") -> None:
    """JSON logs when not started by uvicorn's config (tests, an embedding program)."""
    import logging.config

    if not any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.config.dictConfig(log_config(level))
    sys.stderr.flush()


def _outcome(status: int) -> str:
    return "ok" if status < 400 else "refused" if status < 500 else "failed"


def log_access(method: str, path: str, status: int, start: float, state: dict[str, Any]) -> None:
    """The access line of one request (the middleware's, and the predict protocol's:
    :mod:`mlcloud.server.predict_protocol`); ``state``: the scope's, naming the actor."""
    access.info(
        "request",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "ms": round((time.perf_counter() - start) * 1000, 2),
            "actor": state.get("actor", ANONYMOUS),
        },
    )


class ObserveMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500
        state: dict[str, Any] = scope.setdefault("state", {})
        method, path = scope["method"], scope["path"]
        audited = method in MUTATING and not path.endswith(":predict")

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                audited
                and message["type"] == "http.response.body"
                and not message.get("more_body")
                and state.get("audit", True)  # a dry-run changes nothing: not audited
            ):
                await self._audit(scope, state, status)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            log_access(method, path, status, start, state)

    async def _audit(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        params = scope.get("path_params") or {}
        target = state.get("audit_target") or "/".join(str(v) for v in params.values()) or None
        detail = {"kind": state["error_kind"]} if "error_kind" in state else None
        if scope.get("query_string"):
            detail = {**(detail or {}), "query": scope["query_string"].decode("latin-1")}
        try:
            await run_in_threadpool(
                _record,
                state.get("actor", ANONYMOUS),
                f"{scope['method']} {scope['path']}",
                target,
                status,
                _outcome(status),
                detail,
            )
        except Exception:  # an audit write that fails is loud, but the answer still goes out
            log.exception("audit write failed", extra={"path": scope["path"]})


def _record(
    actor: str, action: str, target: str | None, status: int, outcome: str,
    detail: dict[str, Any] | None,
) -> None:  # fmt: skip
    token_store.record_audit(thread_store(), actor, action, target, status, outcome, detail)
