"""Errors as the API answers them: library errors with the status their class declares, in one line; what could
reveal the server's files or setup only in its log."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from imagedb.api.limits import POOL_TIMEOUT_S, RETRY_AFTER_S, SHOWN_INPUT_CHARS
from imagedb.api.schemas import Problem
from imagedb.errors import ImagedbError, ModelUnavailable
from imagedb.pg.limits import LOCK_TIMEOUT_S
from imagedb.request import ParamError, surface_name

log = logging.getLogger("imagedb.api")

# The answers other than 200 and 422 that API routes may give, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 401, 404, 409, 413, 421, 503)
}


async def library_error(request: Request, exc: ImagedbError) -> JSONResponse:
    status = exc.http_status
    detail = str(exc)
    if isinstance(exc, ParamError):  # named as the client sent it: min_score, not the CLI's --min-score
        detail = exc.named(lambda name: surface_name(name, "api"))
    if isinstance(exc, ModelUnavailable):  # its message names checkpoint paths and cache folders
        log.error("model unavailable: %s", exc, exc_info=exc)
        detail = "model unavailable: the server cannot load the collection's model (see the server's log)"
    elif status >= 500:
        log.error("%s: %s", type(exc).__name__, exc, exc_info=exc)
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own answer, but a bad value is shown by its start: whole, a 2 MB form field came back whole.
    errors = [{**e, "input": _clipped(e["input"])} if "input" in e else e for e in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


async def database_gone(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
    # PoolTimeout is one too: no working connection within POOL_TIMEOUT_S. The full text (socket paths,
    # host names) goes to the log only.
    log.error("database unavailable: %s", exc, exc_info=exc)
    if isinstance(exc, psycopg.errors.DiskFull):  # where, and how much is free, only in the log: a server path
        return JSONResponse({"detail": "the database's disk is full: see the server's log"}, status_code=507)
    reason = f"no connection within {POOL_TIMEOUT_S:g} s" if isinstance(exc, PoolTimeout) else "the connection was lost"
    if isinstance(exc, psycopg.errors.LockNotAvailable):  # lock_timeout (pg/limits.py): another session holds a table
        reason = f"another session has held a table this request needs for {LOCK_TIMEOUT_S} s"
    return JSONResponse(
        {"detail": f"database unavailable: {reason}; retry in a few seconds"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_S},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ImagedbError, library_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(psycopg.OperationalError, database_gone)  # type: ignore[arg-type]


def _clipped(value: object, keep: int = SHOWN_INPUT_CHARS) -> object:
    """A rejected value as a 422 answer shows it: short ones as sent, long texts by their start and length, long
    others (a list, a file's bytes) by the start of their text."""
    text = value if isinstance(value, str) else None
    if text is None:
        if len(shown := repr(value)) <= keep:
            return value
        text = shown
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text):,} characters)"
