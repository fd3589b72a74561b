"""The two-call pattern for conversational text: stream it, then structure it.

Streaming itself (with fallback before the first chunk only) is `Router.stream`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel

from masterplan.llm.base import LLMRequest, Message

if TYPE_CHECKING:
    from masterplan.llm.router import Attempt, Routed, Router


def stream_then_structure(
    router: Router, request: LLMRequest, schema: type[BaseModel], attempts: list[Attempt]
) -> Iterator[str | Routed]:
    """The two-call pattern: stream plain text to the reader, then one JSON-mode call that
    turns the conversation plus that text into `schema`. Yields text chunks, then the Routed
    structured result as the last item."""
    from masterplan.llm.base import json_instructions

    text: list[str] = []
    plain = LLMRequest(request.system, request.messages, request.max_tokens,
                       request.temperature, None, request.tags)
    for item in router.stream(plain, attempts):
        if isinstance(item, str):
            text.append(item)
            yield item
    structured = LLMRequest(
        system=request.system + json_instructions(schema),
        messages=request.messages + (
            Message("assistant", "".join(text)),
            Message("user", "Now give the structured form of your answer."),
        ),
        max_tokens=request.max_tokens,
        temperature=0.0,
        schema=schema,
        tags=request.tags,
    )
    routed = router.route(structured)
    attempts.extend(routed.attempts)
    yield routed
