"""One error shape for the whole API: RFC 9457 problem details.

Every error answer, from a route, a dependency, the body limit or the framework itself, is
`application/problem+json` with `type`, `title`, `status` and `detail` (the one-line summary that
clients and tests already read), and, for a 422, `errors`: one `{field, message}` per problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

PROBLEM_JSON = "application/problem+json"
# No problem here needs more than its status to be understood, so RFC 9457's default type.
BLANK = "about:blank"


class FieldError(BaseModel):
    field: str = Field(description="Where: `idea`, `context.answers.0`, `offset`, `Idempotency-Key`, "
                       "`body`.", examples=["idea"])
    message: str = Field(description="What is wrong and what would be accepted.",
                         examples=["must not be empty or only whitespace"])


class Problem(BaseModel):
    """An error (RFC 9457 problem details)."""

    type: str = Field(description="A URI naming the kind of problem; `about:blank`: the status "
                      "says it all.", examples=[BLANK])
    title: str = Field(description="The status' name.", examples=["Not Found"])
    status: int = Field(ge=400, le=599, description="The HTTP status code, repeated.")
    detail: str = Field(description="What went wrong, for a person.",
                        examples=["no job 4b6f0c1e-0f43-4a8e-9d59-6d1cfb0b3b1a for this API key"])


class ValidationProblem(Problem):
    """A request that was refused before anything was stored: each field and what to fix."""

    errors: list[FieldError] = Field(description="One entry per problem found.")


# RFC 9110's names, where Python 3.11's `http` still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


def title(status: int) -> str:
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def body(status: int, detail: str, errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": BLANK, "title": title(status), "status": status, "detail": detail}
    if errors is not None:
        out["errors"] = errors
    return out


def problem(status: int, detail: str, *, errors: list[dict[str, str]] | None = None,
            headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body(status, detail, errors), status_code=status, headers=headers,
                        media_type=PROBLEM_JSON)


def raw(status: int, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a problem, for pure ASGI code that answers before any framework."""
    payload = json.dumps(body(status, detail), separators=(",", ":")).encode()
    return [(b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(payload)).encode())], payload
