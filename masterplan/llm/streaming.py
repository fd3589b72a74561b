"""Streams: a provider's stream read as one reply, and the two-call pattern.

* `collect`: how the router consumes a provider's stream on the one attempt path it shares
  with completions: pass the text through, return the whole as a `Completion`.
* `stream_then_structure`: stream conversational text, then structure it.

Streaming through the chain (fallback before the first chunk only) is `Router.stream`.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel

from masterplan.errors import ServerError
from masterplan.llm.base import Completion, LLMRequest, Message, StreamEnd, StreamItem

if TYPE_CHECKING:
    from masterplan.llm.router import Attempt, Routed, Router


def collect(items: Iterator[StreamItem], chunks: list[str], *, provider: str,
            started: float) -> Generator[str, None, Completion]:
    """Yield a provider's text chunks (also appended to `chunks`, what the reader has seen) and
    return the whole reply once its `StreamEnd` arrives; `started` is the call's
    `time.perf_counter()`. A stream without text, or without its end, is the provider's
    `ServerError`. The provider's stream is closed however this ends."""
    try:
        for item in items:
            if isinstance(item, StreamEnd):
                if not chunks:
                    raise ServerError("the stream ended without any text", provider=provider)
                latency_ms = int((time.perf_counter() - started) * 1000)
                return Completion.of("".join(chunks), item, latency_ms)
            chunks.append(item)
            yield item
        raise ServerError("the stream ended before its usage", provider=provider)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


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
