"""Streaming through the chain: a provider may be replaced only before its first chunk.

After the first chunk has been yielded the caller has shown text to someone, so switching
provider would splice two different answers; a failure then raises StreamInterrupted carrying
the partial text instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel

from masterplan import errors as E
from masterplan.llm.base import LLMRequest, Message, StreamEnd, StreamItem

if TYPE_CHECKING:
    from masterplan.llm.router import Attempt, Routed, Router


def stream_with_fallback(router: Router, request: LLMRequest, attempts: list[Attempt]) -> Iterator[StreamItem]:
    """Text chunks from the first provider that produces one, then a StreamEnd."""
    from masterplan.llm.router import Attempt

    states = router.cooldowns.snapshot(router.chain)
    waits: list[int] = []
    prev: str | None = None
    for route in router.routes:
        cfg = route.config
        if not states[cfg.name].available:
            attempts.append(Attempt(cfg.name, cfg.model, "skipped_cooldown",
                                    wait_ms=states[cfg.name].cooling_ms, fallback_from=prev))
            waits.append(states[cfg.name].cooling_ms)
            prev = cfg.name
            continue
        reservation = router._admit(route, request, attempts, waits, prev)
        if reservation is None:
            prev = cfg.name
            continue
        started = time.perf_counter()
        try:
            chunks = iter(route.provider.stream(request))
            first = next(chunks)
        except (E.ProviderError, StopIteration) as exc:
            err = exc if isinstance(exc, E.ProviderError) else E.ServerError("empty stream")
            router._settle(route, reservation, 0)
            wait = router._on_error(route, err)
            if wait is not None:
                waits.append(wait)
            attempts.append(Attempt(cfg.name, cfg.model, err.outcome, error=str(err)[:500],
                                    error_class=type(err).__name__, fallback_from=prev))
            prev = cfg.name
            continue
        partial: list[str] = []
        item: StreamItem = first
        try:
            while True:
                if isinstance(item, StreamEnd):
                    u = item.usage
                    router._settle(route, reservation, u.total)
                    attempts.append(Attempt(
                        cfg.name, item.model or cfg.model, "ok", u.input_tokens, u.output_tokens,
                        cfg.cost_usd(u.input_tokens, u.output_tokens),
                        int((time.perf_counter() - started) * 1000), fallback_from=prev,
                    ))
                    yield item
                    return
                partial.append(item)
                yield item
                item = next(chunks)
        except E.ProviderError as exc:
            router._settle(route, reservation, 0)
            router._on_error(route, exc)
            attempts.append(Attempt(cfg.name, cfg.model, exc.outcome, error=str(exc)[:500],
                                    error_class=type(exc).__name__, fallback_from=prev))
            raise E.StreamInterrupted(cfg.name, "".join(partial), exc) from exc
    if waits:
        raise E.RetryLater(min(waits), "every provider is cooling down or rate limited", attempts)
    from masterplan.llm.router import _reasons

    raise E.AllProvidersFailed(_reasons(attempts), attempts)


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
    for item in stream_with_fallback(router, plain, attempts):
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
