"""422s that name the field and say what to fix; no input produces a 500."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


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


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
