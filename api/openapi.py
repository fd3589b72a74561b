"""The OpenAPI document, the API's contract: every answer an operation can give is in it.

FastAPI documents the routes' own models; this adds what is true of the whole API, so no route
has to repeat it: the problem-details bodies of every error (FastAPI's own 422 schema is not the
shape the API answers), 401 on each operation that takes a key, 422 on each that takes input,
413 on each that takes a body, 404 on each that names a resource in its path, 503 on each that
needs the database, and the context's limits as the settings have them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.problems import PROBLEM_JSON, FieldError, Problem, ValidationProblem
from api.validation import ContextLimits, context_json_schemas
from masterplan.settings import Settings

DESCRIPTION = """Submit a startup idea; five specialist personas analyse it, a synthesis merges
their findings into a masterplan, and a devil's advocate attacks it.

Send `Authorization: Bearer <key>` with one of the server's `API_KEYS` (**Authorize** above).
Every error is `application/problem+json` (RFC 9457): `type`, `title`, `status`, `detail`, and
for a 422 `errors`, one `{field, message}` per problem. Nothing is stored for a refused request.
"""

_REF = "#/components/schemas/{model}"
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                "schema": {"type": "integer"}}}
_ADDED: dict[str, dict[str, Any]] = {
    "401": {"description": "No API key, or not one of the server's API_KEYS.",
            "headers": {"WWW-Authenticate": {"description": "`Bearer`", "required": True,
                                             "schema": {"type": "string"}}}},
    "404": {"description": "No such resource for this API key."},
    "413": {"description": "The request body is larger than the server's MAX_REQUEST_BYTES; "
            "refused before the rest of it is read."},
    "422": {"description": "Refused before anything was stored: each field and what to fix. "
            "Also a body that is not valid UTF-8 JSON."},
    "503": {"description": "The database or Redis is unavailable; retry after `Retry-After` "
            "seconds.", "headers": _RETRY_AFTER},
}
_EXAMPLES = {
    "401": {"type": "about:blank", "title": "Unauthorized", "status": 401,
            "detail": "missing API key: send `Authorization: Bearer <key>`"},
    "422": {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
            "detail": "idea: must not be empty or only whitespace",
            "errors": [{"field": "idea", "message": "must not be empty or only whitespace"}]},
}


def _model_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template=_REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _problem_content(code: str) -> dict[str, Any]:
    model = ValidationProblem if code == "422" else Problem
    media: dict[str, Any] = {"schema": {"$ref": _REF.format(model=model.__name__)}}
    if code in _EXAMPLES:
        media["example"] = _EXAMPLES[code]
    return {PROBLEM_JSON: media}


def _complete(path: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op["responses"]
    params = op.get("parameters", [])
    wanted = []
    if op.get("security"):
        wanted.append("401")
    if any(p.get("in") == "path" for p in params):
        wanted.append("404")
    if "requestBody" in op:
        wanted.append("413")
    if params or "requestBody" in op:
        responses.pop("422", None)  # FastAPI's, in a shape the API does not answer
        wanted.append("422")
    if path.startswith("/v1/"):
        wanted.append("503")
    for code in wanted:
        responses.setdefault(code, dict(_ADDED[code]))
    for code, response in responses.items():
        if code.isdigit() and int(code) >= 400 and "content" not in response:
            response["content"] = _problem_content(code)
        if code in ("429", "503"):
            response.setdefault("headers", _RETRY_AFTER)
    op["responses"] = dict(sorted(responses.items()))


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(_model_schemas(FieldError, Problem, ValidationProblem))
    schemas.update(context_json_schemas(ContextLimits.of(settings)))
    job_create = schemas.get("JobCreate")
    if job_create is not None:
        described = job_create["properties"]["context"].get("description", "")
        job_create["properties"]["context"] = {
            "anyOf": [{"$ref": _REF.format(model="Context")}, {"type": "null"}],
            "description": described}
    for path, ops in doc.get("paths", {}).items():
        for op in ops.values():
            _complete(path, op)
    return doc


def install(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
