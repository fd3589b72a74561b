"""The router: one call, the provider chain, fallback on failure, every attempt recorded.

For each provider in chain order:
  cooling down (shared in Redis)      -> skip, note the wait
  token bucket says wait / never fits -> skip at once (spill over to the next provider)
  call; invalid output                -> one repair attempt, then next provider
  rate limited / overloaded / 5xx / timeout / bad request -> next provider, no sleep
When nobody answered and some provider only has to wait: RetryLater(shortest wait).
When every provider failed for good: AllProvidersFailed(reasons).

Redis trouble (the limiter and the cooldowns both raise LimiterUnavailable for it) depends only
on which side of a provider call it strikes:
  before the call (cooldown snapshot, bucket reservation) -> the whole step is deferred:
      RetryLater(LIMITER_DOWN_WAIT_MS) carrying every attempt recorded so far. A call is never
      waved through without the limiter, and the step never fails for it.
  after a reply (a success or a classified provider error) -> every bookkeeping write (settle,
      lower from the provider's headers, drain, cooldowns, circuit reset) is best effort: one
      WARNING naming the provider and what was not recorded, never an exception. The reply is
      paid for: a success is returned with its attempts; an error keeps its attempt row and the
      walk goes on (the next provider's admission defers if Redis is still down).
`route` and `stream` share this through `_admit`, `_settle`, `_succeeded` and `_on_error`.

`before_call(n)` runs just before the n-th real provider call of one route or stream (0-based,
repairs and fallbacks counted, skipped providers not): the caller's cancellation point. What it
raises propagates unchanged, after the call's reservation is handed back; pass `attempts` to
hold the rows made so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from masterplan import errors as E
from masterplan.llm import structured
from masterplan.llm.base import (
    Completion,
    LLMRequest,
    Provider,
    RateLimitInfo,
    StreamEnd,
    StreamItem,
)
from masterplan.llm.cooldowns import CooldownKind, Cooldowns, ProviderState
from masterplan.ratelimit import Reservation, TokenBucketLimiter, reservation_tokens
from masterplan.settings import ProviderConfig

log = logging.getLogger(__name__)

# Ledger rows that are not calls: a provider passed over, or the step put off.
SKIPS = ("skipped_cooldown", "skipped_ratelimit", "never_fits")
DEFERRED = "deferred"

# Waiting for Redis to come back: the task is retried after this, never waved through.
LIMITER_DOWN_WAIT_MS = 2000

# Called with the 0-based index of the provider call about to be made; raise to stop the route.
BeforeCall = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    config: ProviderConfig


@dataclass(slots=True)
class Attempt:
    """One ledger row: a call, or a provider skipped without a call."""

    provider: str
    model: str
    outcome: str  # ok | rate_limited | ... | skipped_cooldown | skipped_ratelimit | never_fits
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    wait_ms: int = 0
    error_class: str | None = None
    error: str | None = None
    fallback_from: str | None = None


@dataclass(slots=True)
class Routed:
    completion: Completion
    attempts: list[Attempt]


class Router:
    """A provider-shaped composite over the chain (`complete`, `stream`)."""

    name = "router"

    def __init__(
        self, routes: Sequence[Route], limiter: TokenBucketLimiter, cooldowns: Cooldowns
    ) -> None:
        self.routes = list(routes)
        self.limiter = limiter
        self.cooldowns = cooldowns
        self.model = ",".join(r.config.model for r in self.routes)

    @property
    def chain(self) -> list[str]:
        return [r.config.name for r in self.routes]

    # -- one attempt ---------------------------------------------------------------------
    def _admit(self, route: Route, request: LLMRequest, attempts: list[Attempt],
               waits: list[int], prev: str | None) -> Reservation | None:
        name = route.config.name
        tokens = reservation_tokens(request.prompt_chars, request.max_tokens)
        try:
            decision = self.limiter.reserve(name, tokens)
        except E.LimiterUnavailable as exc:
            log.warning("rate limiter unavailable, call deferred: %s", exc)
            raise E.RetryLater(LIMITER_DOWN_WAIT_MS, str(exc), attempts) from exc
        if decision.granted:
            return decision.reservation
        if decision.never_fits:
            attempts.append(Attempt(name, route.config.model, "never_fits", fallback_from=prev,
                                    error=f"{tokens} tokens exceed the bucket's capacity"))
        else:
            waits.append(decision.wait_ms)
            attempts.append(Attempt(name, route.config.model, "skipped_ratelimit",
                                    wait_ms=decision.wait_ms, fallback_from=prev))
        return None

    def _settle(self, route: Route, reservation: Reservation | None, used: int) -> None:
        if reservation is not None:
            _best_effort(route.config.name, f"the bucket settlement ({used} tokens used)",
                         self.limiter.reconcile, reservation, used)

    def _announce(self, calls: _Calls, route: Route, reservation: Reservation | None) -> None:
        """The caller's hook before a real call; if it stops us, the call was never made."""
        try:
            calls.before()
        except BaseException:
            self._settle(route, reservation, 0)
            raise

    def _succeeded(self, route: Route, state: ProviderState, reservation: Reservation | None,
                   used: int, rl: RateLimitInfo | None) -> None:
        """The bookkeeping of a good reply."""
        name = route.config.name
        self._settle(route, reservation, used)
        if rl is not None:
            _best_effort(name, "the remaining capacity it reported", self.limiter.lower, name,
                         remaining_tokens=rl.remaining_tokens,
                         remaining_requests=rl.remaining_requests)
        if state.failures:
            _best_effort(name, "the reset of its failure count", self.cooldowns.succeeded, name)

    def _on_error(self, route: Route, exc: E.ProviderError) -> int | None:
        """Classified once by the adapter; here its consequence for every worker.
        Returns the wait before this provider may be asked again, when that is worth waiting for."""
        name = route.config.name
        if isinstance(exc, (E.RateLimited, E.Overloaded)):
            wait = exc.retry_after_ms or (5000 if isinstance(exc, E.Overloaded) else 1000)
            _best_effort(name, f"the bucket drain after {exc.outcome}", self.limiter.drain, name)
            _best_effort(name, f"a {wait} ms cooldown", self.cooldowns.rate_limited,
                         name, wait, f"{exc.outcome} ({exc.status})")
            return wait
        if isinstance(exc, (E.ServerError, E.ProviderTimeout)):
            _best_effort(name, f"a {exc.outcome} towards its circuit breaker",
                         self.cooldowns.failed, name, exc.outcome)
        elif isinstance(exc, E.QuotaExhausted) and exc.retry_after_ms:
            _best_effort(name, f"a {exc.retry_after_ms} ms quota cooldown",
                         self.cooldowns.rate_limited, name, exc.retry_after_ms,
                         f"quota ({exc.status})")
        elif isinstance(exc, (E.AuthError, E.QuotaExhausted)):
            _best_effort(name, f"disabling it after {exc.outcome}", self.cooldowns.disable,
                         name, f"{exc.outcome} ({exc.status}): {exc}")
        return None

    def _call(self, route: Route, request: LLMRequest, attempts: list[Attempt],
              prev: str | None) -> Completion:
        """One provider call, the structured-output check, and its ledger row."""
        cfg = route.config
        started = time.perf_counter()
        try:
            completion = route.provider.complete(request)
        except E.ProviderError as exc:
            exc.provider = exc.provider or cfg.name
            attempts.append(Attempt(
                cfg.name, cfg.model, exc.outcome,
                latency_ms=int((time.perf_counter() - started) * 1000),
                error_class=type(exc).__name__, error=str(exc)[:500], fallback_from=prev,
            ))
            raise
        u = completion.usage
        row = Attempt(
            cfg.name, completion.model or cfg.model, "ok", u.input_tokens, u.output_tokens,
            cfg.cost_usd(u.input_tokens, u.output_tokens), completion.latency_ms,
            fallback_from=prev,
        )
        attempts.append(row)
        if request.schema is not None:
            try:
                completion.data = structured.parse(completion.text, request.schema, provider=cfg.name)
            except E.InvalidOutput as exc:
                row.outcome, row.error_class, row.error = exc.outcome, "InvalidOutput", str(exc)[:500]
                raise _Unusable(exc, completion) from exc
        return completion

    def _try(self, route: Route, state: ProviderState, request: LLMRequest,
             attempts: list[Attempt], waits: list[int], prev: str | None,
             calls: _Calls) -> Completion | None:
        """The provider's turn: admit, call, one repair on invalid output. None: move on."""
        for is_repair in (False, True):
            reservation = self._admit(route, request, attempts, waits, prev)
            if reservation is None:
                return None
            self._announce(calls, route, reservation)
            try:
                completion = self._call(route, request, attempts, prev)
            except _Unusable as bad:
                self._settle(route, reservation, bad.completion.usage.total)
                if is_repair:
                    return None
                request = structured.repair_request(request, bad.completion.text, bad.error)
                continue
            except E.ProviderError as exc:
                self._settle(route, reservation, 0)
                wait = self._on_error(route, exc)
                if wait is not None:
                    waits.append(wait)
                return None
            self._succeeded(route, state, reservation, completion.usage.total,
                            completion.rate_limit)
            return completion
        return None

    # -- the chain -----------------------------------------------------------------------
    def route(self, request: LLMRequest, *, before_call: BeforeCall | None = None,
              attempts: list[Attempt] | None = None) -> Routed:
        """One answer from the first provider that gives a usable one.

        before_call: see the module docstring. attempts: a list to append this call's ledger
        rows to as they happen, so the caller holds them whatever route() raises; the Routed,
        RetryLater and AllProvidersFailed carry that same list.
        """
        attempts = [] if attempts is None else attempts
        first = len(attempts)
        try:
            return self._route(request, attempts, _Calls(before_call))
        finally:
            _log_attempts(request, attempts[first:])

    def _available(self, attempts: list[Attempt], waits: list[int]
                   ) -> Iterator[tuple[Route, ProviderState, str | None]]:
        """The chain in order, skipping (and recording) providers that are cooling down.
        Yields each provider with the one tried or skipped before it."""
        try:
            states = self.cooldowns.snapshot(self.chain)
        except E.LimiterUnavailable as exc:
            log.warning("provider state unavailable, call deferred: %s", exc)
            raise E.RetryLater(LIMITER_DOWN_WAIT_MS, str(exc), attempts) from exc
        prev: str | None = None
        for route in self.routes:
            name = route.config.name
            state = states[name]
            if state.available:
                yield route, state, prev
            else:
                attempts.append(Attempt(name, route.config.model, "skipped_cooldown",
                                        wait_ms=state.cooling_ms, error=state.reason,
                                        fallback_from=prev))
                if state.kind is not CooldownKind.DISABLED:
                    waits.append(state.cooling_ms)
            prev = name

    @staticmethod
    def _nobody_answered(attempts: list[Attempt], waits: list[int]) -> E.MasterplanError:
        if waits:
            return E.RetryLater(min(waits), "every provider is cooling down or rate limited",
                                attempts)
        return E.AllProvidersFailed(reasons(attempts), attempts)

    def _route(self, request: LLMRequest, attempts: list[Attempt], calls: _Calls) -> Routed:
        waits: list[int] = []
        for route, state, prev in self._available(attempts, waits):
            completion = self._try(route, state, request, attempts, waits, prev, calls)
            if completion is not None:
                return Routed(completion, attempts)
        raise self._nobody_answered(attempts, waits)

    def complete(self, request: LLMRequest) -> Completion:
        return self.route(request).completion

    def stream(self, request: LLMRequest, attempts: list[Attempt] | None = None, *,
               before_call: BeforeCall | None = None) -> Iterator[StreamItem]:
        """Text chunks from the first provider that produces one, then a StreamEnd.

        A provider may be replaced only before its first chunk: after that the reader has seen
        its text, and splicing in another provider's answer would be worse than a clear error,
        so a later failure raises StreamInterrupted carrying the partial text.
        """
        attempts = [] if attempts is None else attempts
        waits: list[int] = []
        calls = _Calls(before_call)
        for route, state, prev in self._available(attempts, waits):
            reservation = self._admit(route, request, attempts, waits, prev)
            if reservation is None:
                continue
            self._announce(calls, route, reservation)
            cfg = route.config
            started = time.perf_counter()
            partial: list[str] = []
            try:
                for item in route.provider.stream(request):
                    if not isinstance(item, StreamEnd):
                        partial.append(item)
                        yield item
                        continue
                    if not partial:
                        raise E.ServerError("the stream ended without any text", provider=cfg.name)
                    u = item.usage
                    attempts.append(Attempt(
                        cfg.name, item.model or cfg.model, "ok", u.input_tokens,
                        u.output_tokens, cfg.cost_usd(u.input_tokens, u.output_tokens),
                        int((time.perf_counter() - started) * 1000), fallback_from=prev,
                    ))
                    self._succeeded(route, state, reservation, u.total, item.rate_limit)
                    yield item
                    return
                raise E.ServerError("the stream ended before its usage", provider=cfg.name)
            except E.ProviderError as exc:
                attempts.append(Attempt(cfg.name, cfg.model, exc.outcome, error=str(exc)[:500],
                                        error_class=type(exc).__name__, fallback_from=prev))
                self._settle(route, reservation, 0)
                wait = self._on_error(route, exc)
                if wait is not None:
                    waits.append(wait)
                if partial:
                    raise E.StreamInterrupted(cfg.name, "".join(partial), exc) from exc
        raise self._nobody_answered(attempts, waits)


class _Calls:
    """Numbers the real provider calls of one route and runs the caller's hook before each."""

    __slots__ = ("hook", "made")

    def __init__(self, hook: BeforeCall | None) -> None:
        self.hook = hook
        self.made = 0

    def before(self) -> None:
        n, self.made = self.made, self.made + 1
        if self.hook is not None:
            self.hook(n)


def _best_effort(provider: str, what: str, fn: Callable[..., object], *args: Any,
                 **kwargs: Any) -> None:
    """Bookkeeping after a reply: Redis being down must not cost a reply already paid for."""
    try:
        fn(*args, **kwargs)
    except E.LimiterUnavailable as exc:
        log.warning("provider %s: %s not recorded, Redis unavailable: %s", provider, what, exc,
                    extra={"provider": provider})


def _log_attempts(request: LLMRequest, attempts: list[Attempt]) -> None:
    """One line per attempt, with the context fields that JSON logs carry."""
    for n, a in enumerate(attempts, 1):
        level = logging.INFO if a.outcome == "ok" else logging.WARNING
        if a.outcome.startswith("skipped") or a.outcome == "never_fits":
            level = logging.INFO
        log.log(level, "llm %s via %s: %s (%d ms, %d+%d tokens, waited %d ms)%s",
                request.tags.get("stage", "-"), a.provider, a.outcome, a.latency_ms,
                a.input_tokens, a.output_tokens, a.wait_ms,
                f" after {a.fallback_from}" if a.fallback_from else "",
                extra={"job_id": request.tags.get("job_id"), "stage": request.tags.get("stage"),
                       "provider": a.provider, "attempt": n, "outcome": a.outcome})


class _Unusable(Exception):
    """A reply arrived but failed validation: carries it for the repair attempt."""

    def __init__(self, error: E.InvalidOutput, completion: Completion) -> None:
        super().__init__(str(error))
        self.error = error
        self.completion = completion


def reasons(attempts: list[Attempt]) -> dict[str, str]:
    """Each provider's last trouble in these attempts."""
    reasons: dict[str, str] = {}
    for a in attempts:
        if a.outcome != "ok":
            reasons[a.provider] = f"{a.outcome}: {a.error}" if a.error else a.outcome
    return reasons
