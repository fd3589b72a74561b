"""Every error as problem details (`api.problems`); 422s name the field and say what to fix.

No input produces a 500: what the framework would answer itself (a body it cannot parse, a
route that does not exist, a method not allowed) goes through here too, and an unexpected
exception is answered with a bare 500 that tells nothing (the server logs its traceback).
"""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.problems import problem
from masterplan.db.session import is_db_unavailable

log = logging.getLogger(__name__)
# FastAPI answers a body it could not decode or parse (not UTF-8, nested past the parser's
# recursion limit, an integer of more than 4,300 digits) with a 400 of this text; the README
# promises a 422 for a body that is not valid JSON.
_UNPARSABLE_BODY = "There was an error parsing the body"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _field(loc: tuple[object, ...]) -> str:
    if len(loc) == 2 and loc[0] == "header":
        return "-".join(p.capitalize() for p in str(loc[1]).split("-"))  # as clients spell it
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(e: dict[str, object], field: str) -> str:
    kind = e.get("type")
    ctx = e.get("ctx")
    if kind == "json_invalid":
        why = ctx.get("error", "parse error") if isinstance(ctx, dict) else "parse error"
        return f"the body is not valid JSON ({why})"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}; allowed: idea, context"
    return str(e.get("msg", "invalid")).removeprefix("Value error, ")


def unprocessable(errors: list[dict[str, str]]) -> JSONResponse:
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in errors)
    return problem(422, summary, errors=errors)


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        field = _field(tuple(e.get("loc", ())))
        errors.append({"field": field, "message": _message(e, field)})
    return unprocessable(errors)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
        cause = exc.__cause__
        if isinstance(cause, UnicodeDecodeError):
            why = "it is not UTF-8"
        elif isinstance(cause, RecursionError):
            why = "it is nested too deeply to parse"
        else:
            why = type(cause).__name__ if cause is not None else "parse error"
            if isinstance(cause, ValueError):
                why = str(cause).split(";")[0]
        return unprocessable([{"field": "body", "message": f"the body is not valid JSON ({why})"}])
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": _allowed(request)}
    return problem(exc.status_code, str(exc.detail), headers=headers)


def _allowed(request: Request) -> str:
    """Every method the path answers, not only those of the first route that matched it:
    Starlette puts one route's methods in `Allow`, and FastAPI makes a route per method."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def database_error(_: Request, exc: Exception) -> JSONResponse:
    """The database is away (restarting, unreachable): 503 and when to try again, not 500.
    The connection pool reconnects by itself once it is back."""
    if not is_db_unavailable(exc):
        raise exc
    log.warning("database unavailable: %s", type(exc).__name__)
    return problem(503, "the database is unavailable; retry in a few seconds",
                   headers={"Retry-After": "2"})


async def redis_error(_: Request, exc: Exception) -> JSONResponse:
    """Redis (provider cooldowns and buckets) is away: 503, like the database."""
    log.warning("redis unavailable: %s", type(exc).__name__)
    return problem(503, "rate-limit state (Redis) is unavailable; retry in a few seconds",
                   headers={"Retry-After": "2"})


async def internal_error(_: Request, __: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this answer, so the server logs its traceback.
    return problem(500, "internal error; it has been logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sa_exc.DBAPIError, database_error)
    app.add_exception_handler(sa_exc.TimeoutError, database_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, redis_error)
    app.add_exception_handler(redis.exceptions.TimeoutError, redis_error)
    app.add_exception_handler(Exception, internal_error)
