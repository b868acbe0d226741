"""Errors as HTTP responses: `{"error": {"type", "message"}}` with the status that fits,
`errors` added for validation failures."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import errors as e
from ._auth import AuthError

logger = logging.getLogger("tether.server")

# Checked in order: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (e.ExecutionNotFound, 404),
    (e.WaitNotFound, 404),
    (e.MemoryKeyError, 404),
    (e.NotPublished, 404),
    (e.ScheduleNotFound, 404),
    (e.FlowNotFoundError, 404),
    (e.InputTooLarge, 413),
    (e.InputValidationError, 422),
    (e.MemoryValidationError, 422),
    (e.WaitAlreadyResolved, 409),
    (e.MessageAlreadySent, 409),
    (e.InvalidStateError, 409),
    (e.ExecutionLocked, 409),
    (e.MemoryConflictError, 409),
    (e.UsageError, 400),
    (e.SerializationError, 422),
    (e.StoreUnavailable, 503),
)


def status_of(exc: e.TetherError) -> int:
    """The HTTP status of a tether error (500: one nobody expected)."""
    return next((s for cls, s in _STATUS if isinstance(exc, cls)), 500)


def body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **extra}}


def install(app: FastAPI) -> None:
    @app.exception_handler(e.TetherError)
    async def tether_error(request: Request, exc: e.TetherError) -> JSONResponse:
        status = status_of(exc)
        extra: dict[str, Any] = {}
        if isinstance(exc, e.InputValidationError | e.MemoryValidationError):
            extra["errors"] = _jsonable(getattr(exc, "errors", []))
        return JSONResponse(body(type(exc).__name__, str(exc), **extra), status_code=status)

    @app.exception_handler(AuthError)
    async def auth_error(request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(body(exc.kind, exc.message), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _jsonable(exc.errors())
        where = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in errors
        )
        return JSONResponse(
            body("RequestValidationError", f"invalid request: {where}", errors=errors),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            body("InternalError", f"unexpected {type(exc).__name__}; the server log has details"),
            status_code=500,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = {404: "NotFound", 405: "MethodNotAllowed", 415: "UnsupportedMediaType"}.get(
            exc.status_code, "HTTPError"
        )
        return JSONResponse(
            body(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )


def _jsonable(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without what JSON cannot hold (exception objects in `ctx`)."""
    shown = []
    for err in errors or []:
        if not isinstance(err, dict):
            continue
        item = {k: v for k, v in err.items() if k in ("type", "loc", "msg", "input")}
        item["loc"] = [p if isinstance(p, int | str) else str(p) for p in item.get("loc", ())]
        if "input" in item and not isinstance(item["input"], str | int | float | bool | None):
            item.pop("input")  # the request's own value, possibly large: the client has it
        shown.append(item)
    return shown
