"""Every error as JSON ``{"error": code, "message": ..., "details": [...]}`` with the right status.

The mapping from the error tree (:mod:`app.errors`) to HTTP lives here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from app.api.auth import ConfigError, Forbidden, TooManyFailures, Unauthorized
from app.code.engine import NotJSON
from app.errors import DefinitionError, InvalidRequest, InvalidState, NotFound, TideflowError

log = logging.getLogger("tideflow.api")

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests"}


def error_response(status: int, code: str, message: str, details: list[Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": code, "message": " ".join(message.split()), "details": details or []}
    return JSONResponse(body, status_code=status, headers=headers)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc)


async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": _where(tuple(e.get("loc", ()))), "msg": e.get("msg", "")} for e in exc.errors()]
    first = f"{details[0]['loc']}: {details[0]['msg']}" if details else "invalid request"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return error_response(422, "invalid_request", f"invalid request: {first}{more}", details)


async def _tideflow(_req: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DefinitionError):
        return error_response(422, "invalid_definition", str(exc), list(exc.problems))
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, InvalidRequest):
        return error_response(422, "invalid_request", str(exc))
    if isinstance(exc, NotJSON):  # e.g. a signal's data with NaN (Python's JSON parser reads it)
        return error_response(422, "invalid_request", str(exc))
    if isinstance(exc, InvalidState):
        return error_response(409, "conflict", str(exc))
    if isinstance(exc, Unauthorized):
        return error_response(401, "unauthorized", str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, Forbidden):
        return error_response(403, "forbidden", str(exc))
    if isinstance(exc, TooManyFailures):
        return error_response(429, "too_many_requests", str(exc), headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ConfigError):
        return error_response(500, "misconfigured", str(exc))
    log.error("unmapped Tideflow error", exc_info=exc)
    return error_response(500, "internal", f"{type(exc).__name__}: {exc}")


async def _http(_req: Request, exc: HTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _database(req: Request, exc: Exception) -> JSONResponse:
    tf = getattr(req.app.state, "tideflow", None)
    said = await run_in_threadpool(tf.runtime.db.explain, exc) if tf is not None else None
    if said:  # a schema that is missing or behind ("run `tideflow db upgrade`"), a statement timeout
        log.error("database: %s", said)
        return error_response(503, "unavailable", said, headers={"Retry-After": "5"})
    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return error_response(503, "unavailable", "the database is unavailable; nothing was changed, retry later",
                              headers={"Retry-After": "5"})
    return await _unexpected(req, exc)


async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error in the API", exc_info=exc)
    return error_response(500, "internal", "internal error (logged by the server)")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(TideflowError, _tideflow)
    app.add_exception_handler(HTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(DBAPIError, _database)
    app.add_exception_handler(Exception, _unexpected)
