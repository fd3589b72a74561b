"""The router: one call, the provider chain, fallback on failure, every attempt recorded.

For each provider in chain order:
  cooling down (shared in Redis)      -> skip, note the wait
  circuit open (shared in Redis)      -> skip; no wait: it is not worth waiting for
  circuit half-open                   -> the one call (of all workers) that claims the probe
                                         calls it; every other call skips it as still open
  token bucket says wait / never fits -> skip at once (spill over to the next provider)
  call; invalid output                -> one repair attempt, then next provider
  call; 400 refusing the structured-output mode -> the same call at once one mode weaker,
                                         remembered for every worker (structured.ModeMemory)
  rate limited / overloaded / 5xx / timeout / silent or cut stream / bad request
                                      -> next provider, no sleep
When nobody answered and some provider only has to wait (a rate limit, a Retry-After, a
bucket): RetryLater(shortest wait). When every provider failed, or the only ones left have an
open circuit: AllProvidersFailed(reasons), `transient` when one failure was.

Every call is streamed from the provider (`Provider.stream`, through `streaming.collect`), so
that its adapter's first-token and stall timeouts (masterplan/llm/sdk.py) see a silent provider
within seconds. `route` assembles the text and validates it at the end, as a whole reply;
`stream` passes the chunks to its reader. A provider's turn is one function, `_turn`, for both:
admission (the bucket reservation), the call, its ledger row (with its latency, an error's
too), settlement, what a reply's headers say about remaining capacity, the circuit reset, an
error's consequences for every worker (its class decides them: masterplan.errors), and the log
lines. A failed stream that had produced text is settled and recorded at an estimate of what it
produced. `stream` falls back only before its first chunk; after it, the reader has seen that
provider's text, and StreamInterrupted carries it. `route`, whose chunks nobody saw, falls back
whenever the stream failed.

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

`before_call(n, provider, reservation)` runs just before the n-th real provider call of one route
or stream (0-based, repairs and fallbacks counted, skipped providers not), with the provider's
configuration and what the call reserved: the caller's cancellation and budget point. What it
raises propagates unchanged, after the call's reservation is handed back; pass `attempts` to
hold the rows made so far.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from masterplan import errors as E
from masterplan.llm import structured
from masterplan.llm.base import Completion, LLMRequest, Provider, StreamItem, Usage
from masterplan.llm.cooldowns import CooldownKind, Cooldowns, ProviderState
from masterplan.llm.outcomes import SKIPS, CallOutcome
from masterplan.llm.streaming import collect
from masterplan.ratelimit import Reservation, TokenBucketLimiter, reservation_tokens
from masterplan.settings import ProviderConfig

log = logging.getLogger(__name__)

# Waiting for Redis to come back: the task is retried after this, never waved through.
LIMITER_DOWN_WAIT_MS = 2000

# Called with the 0-based index of the provider call about to be made, its provider and its
# reservation; raise to stop the route.
BeforeCall = Callable[[int, ProviderConfig, Reservation], None]

# A provider's turn: text chunks when streamed (none otherwise), then its reply or None.
Turn = Generator[str, None, Completion | None]


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    config: ProviderConfig


@dataclass(slots=True)
class Attempt:
    """One ledger row: a call, or a provider skipped without a call."""

    provider: str
    model: str
    outcome: CallOutcome
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: int = 0
    wait_ms: int = 0
    error_class: str | None = None
    error: str | None = None
    fallback_from: str | None = None
    # Parts of input_tokens: read from the provider's prompt cache, written to it.
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    # When the attempt began (epoch seconds): a row is made when its call ends, `latency_ms`
    # after it began. A float, not a datetime: rows travel in a task's retry as JSON.
    started: float = 0.0

    def __post_init__(self) -> None:
        if not self.started:
            self.started = time.time() - self.latency_ms / 1000


@dataclass(slots=True)
class Routed:
    completion: Completion
    attempts: list[Attempt]


@dataclass(slots=True)
class _Walk:
    """One route or stream down the chain: its ledger rows (the caller's list, appended to as
    they happen), the waits it met, whether a failure was transient, and the numbering of its
    real provider calls for the caller's hook."""

    attempts: list[Attempt]
    hook: BeforeCall | None
    first: int = field(init=False)  # rows before this one are the caller's
    waits: list[int] = field(default_factory=list)
    transient: bool = False
    made: int = 0

    def __post_init__(self) -> None:
        self.first = len(self.attempts)

    def before_call(self, config: ProviderConfig, reservation: Reservation) -> None:
        n, self.made = self.made, self.made + 1
        if self.hook is not None:
            self.hook(n, config, reservation)

    def nobody_answered(self) -> E.MasterplanError:
        if self.waits:
            return E.RetryLater(min(self.waits), "every provider is cooling down or rate limited",
                                self.attempts)
        return E.AllProvidersFailed(reasons(self.attempts), self.attempts,
                                    transient=self.transient)


class Router:
    """A provider-shaped composite over the chain (`complete`, `stream`)."""

    name = "router"

    def __init__(
        self, routes: Sequence[Route], limiter: TokenBucketLimiter, cooldowns: Cooldowns,
        *, modes: structured.ModeMemory | None = None,
    ) -> None:
        self.routes = list(routes)
        self.limiter = limiter
        self.cooldowns = cooldowns
        # Structured-output modes degraded after a provider refused one (None: this process's).
        self.modes = modes or structured.ModeMemory(None)
        self.model = ",".join(r.config.model for r in self.routes)

    @property
    def chain(self) -> list[str]:
        return [r.config.name for r in self.routes]

    # -- one provider's turn -------------------------------------------------------------
    def _admit(self, route: Route, request: LLMRequest, walk: _Walk,
               prev: str | None) -> Reservation | None:
        name = route.config.name
        tokens = reservation_tokens(request.prompt_chars, request.max_tokens)
        try:
            decision = self.limiter.reserve(name, tokens, keep=request.headroom)
        except E.LimiterUnavailable as exc:
            log.warning("rate limiter unavailable, call deferred: %s", exc)
            raise E.RetryLater(LIMITER_DOWN_WAIT_MS, str(exc), walk.attempts) from exc
        if decision.granted:
            return decision.reservation
        if decision.never_fits:
            walk.attempts.append(Attempt(
                name, route.config.model, CallOutcome.NEVER_FITS, fallback_from=prev,
                error=f"{tokens} tokens exceed the bucket's capacity"))
        else:
            walk.waits.append(decision.wait_ms)
            walk.attempts.append(Attempt(name, route.config.model, CallOutcome.SKIPPED_RATELIMIT,
                                         wait_ms=decision.wait_ms, fallback_from=prev))
        return None

    def _settle(self, route: Route, reservation: Reservation, used: int, *,
                answered: bool = False) -> None:
        """Hand back what the provider did not count. A reply is settled as the provider charges
        it (`<NAME>_LIMIT_COUNTS`: what it used, or the whole reservation); a call that was
        refused, failed or never sent returns its whole reservation."""
        settle = self.limiter.settle if answered else self.limiter.reconcile
        _best_effort(route.config.name, f"the bucket settlement ({used} tokens used)",
                     settle, reservation, used)

    def _announce(self, walk: _Walk, route: Route, reservation: Reservation) -> None:
        """The caller's hook before a real call; if it stops us, the call was never made."""
        try:
            walk.before_call(route.config, reservation)
        except BaseException:
            self._settle(route, reservation, 0)
            raise

    def _replied(self, route: Route, state: ProviderState, reservation: Reservation,
                 completion: Completion) -> None:
        """The bookkeeping of a reply (valid or not, the provider answered)."""
        name = route.config.name
        self._settle(route, reservation, completion.usage.total, answered=True)
        rl = completion.rate_limit
        if rl is not None:
            _best_effort(name, "the remaining capacity it reported", self.limiter.lower, name,
                         remaining_tokens=rl.remaining_tokens,
                         remaining_requests=rl.remaining_requests)
        if state.failures or state.opens:
            _best_effort(name, "the reset of its failure count", self.cooldowns.succeeded, name)

    def _failed(self, route: Route, reservation: Reservation, exc: E.ProviderError,
                walk: _Walk, used: int = 0) -> None:
        """Classified once by the adapter; here its consequence for every worker, as its
        class says. A wait worth waiting for goes into the walk's waits. `used`: the tokens a
        stream that failed after producing text is estimated to have cost."""
        name = route.config.name
        self._settle(route, reservation, used, answered=used > 0)
        walk.transient = walk.transient or exc.transient
        why = f"{exc.outcome} ({exc.status})"
        if exc.trips_circuit:
            # Before any Retry-After cooldown: a half-open probe's failure re-opens the circuit,
            # and a cooldown already set would make it look open already.
            _best_effort(name, f"a {exc.outcome} towards its circuit breaker",
                         self.cooldowns.failed, name, f"{exc.outcome}: {exc}")
        wait = exc.wait_ms
        if wait is not None:
            _best_effort(name, f"the bucket drain after {exc.outcome}", self.limiter.drain, name)
            _best_effort(name, f"a {wait} ms cooldown", self.cooldowns.rate_limited,
                         name, wait, why)
            walk.waits.append(wait)
        elif exc.benches and exc.bench_ms:
            _best_effort(name, f"a {exc.bench_ms} ms quota cooldown",
                         self.cooldowns.rate_limited, name, exc.bench_ms, f"quota ({exc.status})")
        elif exc.benches:
            _best_effort(name, f"disabling it after {exc.outcome}", self.cooldowns.disable,
                         name, f"{why}: {exc}")

    def _remembered_mode(self, route: Route, request: LLMRequest) -> LLMRequest:
        """The request in the weaker mode this provider's model was degraded to, if it was."""
        cfg = route.config
        if request.schema is None or cfg.structured_output not in structured.WEAKER:
            return request
        mode = self.modes.get(cfg.name, cfg.model)
        return request if mode is None else structured.in_mode(request, mode)

    def _degrade(self, route: Route, reservation: Reservation, request: LLMRequest,
                 exc: structured.ModeUnsupported, walk: _Walk, prev: str | None,
                 started: float) -> LLMRequest:
        """A 400 refusing the structured-output mode is not the call's failure (no circuit
        count, no fallback): its own row, the reservation handed back, the provider's model
        remembered one mode weaker for every worker, and the same call in that mode."""
        cfg = route.config
        weaker = structured.WEAKER[exc.mode]
        walk.attempts.append(Attempt(
            cfg.name, cfg.model, exc.outcome,
            latency_ms=int((time.perf_counter() - started) * 1000),
            error_class=type(exc).__name__, error=str(exc)[:500], fallback_from=prev,
        ))
        self._settle(route, reservation, 0)
        self.modes.degrade(cfg.name, cfg.model, weaker)
        log.warning("provider %s (%s) refused structured output %s: asking in %s from now on",
                    cfg.name, cfg.model, exc.mode, weaker, extra={"provider": cfg.name})
        return structured.in_mode(request, weaker)

    def _turn(self, route: Route, state: ProviderState, request: LLMRequest, walk: _Walk,
              prev: str | None, *, stream: bool) -> Turn:
        """The provider's turn, its chunks passed to the reader or not (`stream`): admit, call,
        record, settle; one repair on invalid output (a route's: a stream's text is already the
        reader's); a refused structured-output mode retried at once in a weaker one (at most
        twice: see WEAKER). Returns the reply, or None: move on to the next provider."""
        cfg = route.config
        request = self._remembered_mode(route, request)
        repairs = 1
        while True:
            reservation = self._admit(route, request, walk, prev)
            if reservation is None:
                return None
            self._announce(walk, route, reservation)
            started = time.perf_counter()
            chunks: list[str] = []
            reading = collect(route.provider.stream(request), chunks, provider=cfg.name,
                              started=started)
            try:
                completion = (yield from reading) if stream else _drain(reading)
            except structured.ModeUnsupported as exc:
                request = self._degrade(route, reservation, request, exc, walk, prev, started)
                continue
            except E.ProviderError as exc:
                exc.provider = exc.provider or cfg.name
                # Text produced was counted by the provider: an estimate, not a refund.
                spent = Usage.estimated(request, sum(map(len, chunks))) if chunks else Usage()
                walk.attempts.append(Attempt(
                    cfg.name, cfg.model, exc.outcome, spent.input_tokens, spent.output_tokens,
                    cfg.cost_usd(spent.input_tokens, spent.output_tokens),
                    latency_ms=int((time.perf_counter() - started) * 1000),
                    error_class=type(exc).__name__, error=str(exc)[:500], fallback_from=prev,
                ))
                self._failed(route, reservation, exc, walk, spent.total)
                if stream and chunks:
                    raise E.StreamInterrupted(cfg.name, "".join(chunks), exc) from exc
                return None
            u = completion.usage
            row = Attempt(
                cfg.name, completion.model or cfg.model, CallOutcome.OK, u.input_tokens,
                u.output_tokens, cfg.cost_usd(u.input_tokens, u.output_tokens,
                                              cached_input_tokens=u.cached_input_tokens,
                                              cache_write_tokens=u.cache_write_tokens),
                completion.latency_ms, fallback_from=prev,
                cached_input_tokens=u.cached_input_tokens, cache_write_tokens=u.cache_write_tokens,
            )
            walk.attempts.append(row)
            self._replied(route, state, reservation, completion)
            if stream or request.schema is None:
                return completion
            try:
                completion.data = structured.parse(completion.text, request.schema,
                                                   provider=cfg.name)
            except E.InvalidOutput as exc:
                row.outcome, row.error_class, row.error = exc.outcome, type(exc).__name__, \
                    str(exc)[:500]
                if not repairs:
                    return None
                repairs -= 1
                request = structured.repair_request(request, completion.text, exc)
                continue
            return completion

    # -- the chain -----------------------------------------------------------------------
    def _available(self, walk: _Walk) -> Iterator[tuple[Route, ProviderState, str | None,
                                                        str | None]]:
        """The chain in order, skipping (and recording) providers that are cooling down or
        whose circuit is open. Yields each provider with the one tried or skipped before it,
        and the probe it holds when its circuit is half-open (released after its turn)."""
        try:
            states = self.cooldowns.snapshot(self.chain)
        except E.LimiterUnavailable as exc:
            log.warning("provider state unavailable, call deferred: %s", exc)
            raise E.RetryLater(LIMITER_DOWN_WAIT_MS, str(exc), walk.attempts) from exc
        prev: str | None = None
        for route in self.routes:
            name = route.config.name
            state = states[name]
            if not state.available:
                self._skip(walk, route, state, prev)
            elif not state.half_open:
                yield route, state, prev, None
            elif (probe := self._claim_probe(walk, name)) is not None:
                yield route, state, prev, probe
            else:
                walk.transient = True
                walk.attempts.append(Attempt(
                    name, route.config.model, CallOutcome.SKIPPED_COOLDOWN, fallback_from=prev,
                    error="circuit half-open: another call is probing it"))
            prev = name

    @staticmethod
    def _skip(walk: _Walk, route: Route, state: ProviderState, prev: str | None) -> None:
        """A provider cooling down: its row, and its wait when it is worth waiting for (a rate
        limit's; an open circuit's is not: the provider does not answer, and a step left with
        nothing else fails with every provider's reason instead of waiting for it)."""
        name, error, wait = route.config.name, state.reason, state.cooling_ms
        if state.kind is CooldownKind.CIRCUIT_OPEN:
            walk.transient = True
            error, wait = f"circuit {state.reason} (half-open in {wait / 1000:.1f} s)", 0
        walk.attempts.append(Attempt(name, route.config.model, CallOutcome.SKIPPED_COOLDOWN,
                                     wait_ms=wait, error=error, fallback_from=prev))
        if state.kind is CooldownKind.RATE_LIMITED:
            walk.waits.append(wait)

    def _claim_probe(self, walk: _Walk, name: str) -> str | None:
        try:
            return self.cooldowns.probe(name)
        except E.LimiterUnavailable as exc:
            log.warning("provider state unavailable, call deferred: %s", exc)
            raise E.RetryLater(LIMITER_DOWN_WAIT_MS, str(exc), walk.attempts) from exc

    def _chain(self, request: LLMRequest, walk: _Walk, *, stream: bool
               ) -> Generator[str, None, Completion]:
        """Each available provider's turn until one answers; else RetryLater or
        AllProvidersFailed. Every row this walk made is logged however it ends."""
        try:
            for route, state, prev, probe in self._available(walk):
                try:
                    completion = yield from self._turn(route, state, request, walk, prev,
                                                       stream=stream)
                finally:
                    if probe is not None:
                        _best_effort(route.config.name, "the release of its circuit probe",
                                     self.cooldowns.release_probe, route.config.name, probe)
                if completion is not None:
                    return completion
            raise walk.nobody_answered()
        finally:
            _log_attempts(request, walk.attempts[walk.first:])

    def route(self, request: LLMRequest, *, before_call: BeforeCall | None = None,
              attempts: list[Attempt] | None = None) -> Routed:
        """One answer from the first provider that gives a usable one.

        before_call: see the module docstring. attempts: a list to append this call's ledger
        rows to as they happen, so the caller holds them whatever route() raises; the Routed,
        RetryLater and AllProvidersFailed carry that same list.
        """
        walk = _Walk([] if attempts is None else attempts, before_call)
        return Routed(_whole(self._chain(request, walk, stream=False)), walk.attempts)

    def complete(self, request: LLMRequest) -> Completion:
        return self.route(request).completion

    def stream(self, request: LLMRequest, attempts: list[Attempt] | None = None, *,
               before_call: BeforeCall | None = None) -> Iterator[StreamItem]:
        """Text chunks from the first provider that produces one, then a StreamEnd; the
        arguments are route()'s. A failure after the first chunk raises StreamInterrupted
        carrying the partial text: splicing in another provider's answer after the reader has
        seen this one's would be worse than a clear error."""
        walk = _Walk([] if attempts is None else attempts, before_call)
        completion = yield from self._chain(request, walk, stream=True)
        yield completion.end()


def _drain(reading: Generator[str, None, Completion]) -> Completion:
    """A provider's stream read whole, for a caller that wants the reply, not its chunks."""
    while True:
        try:
            next(reading)
        except StopIteration as done:
            completion: Completion = done.value
            return completion


def _whole(chain: Generator[str, None, Completion]) -> Completion:
    """The reply of a chain walked without streaming (whose turns yield no chunks)."""
    try:
        chunk = next(chain)
    except StopIteration as done:
        completion: Completion = done.value
        return completion
    chain.close()
    raise AssertionError(f"a completion yielded a chunk: {chunk!r}")


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
        quiet = a.outcome == CallOutcome.OK or a.outcome in SKIPS
        log.log(logging.INFO if quiet else logging.WARNING,
                "llm %s via %s: %s (%d ms, %d+%d tokens, waited %d ms)%s",
                request.tags.get("stage", "-"), a.provider, a.outcome, a.latency_ms,
                a.input_tokens, a.output_tokens, a.wait_ms,
                f" after {a.fallback_from}" if a.fallback_from else "",
                extra={"job_id": request.tags.get("job_id"), "stage": request.tags.get("stage"),
                       "provider": a.provider, "attempt": n, "outcome": a.outcome})


def reasons(attempts: list[Attempt]) -> dict[str, str]:
    """Each provider's last trouble in these attempts."""
    reasons: dict[str, str] = {}
    for a in attempts:
        if a.outcome != CallOutcome.OK:
            reasons[a.provider] = f"{a.outcome}: {a.error}" if a.error else a.outcome
    return reasons
