"""422s that name the field and say what to fix; no input produces a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from masterplan.db.session import is_db_unavailable

log = logging.getLogger(__name__)


def _field(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for e in exc.errors():
        field = _field(tuple(e.get("loc", ())))
        if e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'parse error')})"
        elif e.get("type") == "extra_forbidden":
            msg = f"unknown field {field!r}; allowed: idea, context"
        else:
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append({"field": field, "message": msg})
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse(status_code=422, content={"detail": summary, "errors": problems})


async def database_error(_: Request, exc: Exception) -> JSONResponse:
    """The database is away (restarting, unreachable): 503 and when to try again, not 500.
    The connection pool reconnects by itself once it is back."""
    if not is_db_unavailable(exc):
        raise exc
    log.warning("database unavailable: %s", type(exc).__name__)
    return JSONResponse(status_code=503, headers={"Retry-After": "2"},
                        content={"detail": "the database is unavailable; retry in a few seconds"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(sa_exc.DBAPIError, database_error)
    app.add_exception_handler(sa_exc.TimeoutError, database_error)
