"""Parse and validate structured output; build the one repair request."""

from __future__ import annotations

import json

from pydantic import BaseModel, ValidationError

from masterplan.errors import InvalidOutput
from masterplan.llm.base import LLMRequest, Message


def _strip_fences(text: str) -> str:
    t = text.strip()
    if t.startswith("```"):
        t = t.split("\n", 1)[1] if "\n" in t else ""
        if t.rstrip().endswith("```"):
            t = t.rstrip()[:-3]
    return t.strip()


def parse(text: str, schema: type[BaseModel], *, provider: str = "") -> BaseModel:
    """The validated object, or InvalidOutput saying what is wrong (short, for the repair)."""
    try:
        data = json.loads(_strip_fences(text))
    except json.JSONDecodeError as exc:
        raise InvalidOutput(f"not valid JSON: {exc.msg} at char {exc.pos}", provider=provider) from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidOutput(f"does not match {schema.__name__}: {problems}", provider=provider) from None


def repair_request(request: LLMRequest, bad_text: str, error: InvalidOutput) -> LLMRequest:
    """The original conversation plus the bad reply and what was wrong with it."""
    assert request.schema is not None
    return request.with_messages(
        Message("assistant", bad_text[:4000] or "(empty)"),
        Message(
            "user",
            f"Your reply was invalid: {error}. Reply again with one JSON object that validates "
            f"against the {request.schema.__name__} schema given above. JSON only.",
        ),
    )
