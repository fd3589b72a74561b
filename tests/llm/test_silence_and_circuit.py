"""A silent provider is left within seconds, and a dead one opens its circuit.

Through the real SDKs against local fake providers (the first in the chain misbehaving, the
second honest), with buckets, cooldowns and circuits on real Redis. Timeouts and circuit times
are a fraction of a second, so the waits are real but short.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from masterplan import errors as E
from masterplan.llm.base import LLMRequest, StreamEnd
from masterplan.llm.outcomes import CallOutcome
from masterplan.llm.registry import build_router
from masterplan.llm.router import Attempt, Router
from masterplan.personas import persona_request
from masterplan.schemas import PersonaOutput
from testkit.fake_provider import FakeProvider
from tests.conftest import make_settings

# A structured call (a persona's), and a plain one for the streaming caller.
REQ = persona_request("market", "a marketplace for used lab equipment", None)
PLAIN = LLMRequest("You are terse.", REQ.messages, max_tokens=300)
TPM = 60_000
FIRST_TOKEN_S = 0.5


@pytest.fixture(params=["groq", "anthropic"])
def first(request: pytest.FixtureRequest) -> Iterator[FakeProvider]:
    """The provider that misbehaves, behind each SDK in turn."""
    flavor = request.param
    with FakeProvider(flavor=flavor, api_key="sk-first", hang_s=10) as fake:
        yield fake


@pytest.fixture
def second() -> Iterator[FakeProvider]:
    with FakeProvider(flavor="gemini", api_key="sk-second") as fake:
        yield fake


def router_for(first: FakeProvider, second: FakeProvider, redis_client: Any,
               **extra: str) -> Router:
    name = first.flavor  # "groq" or "anthropic": a known provider of that API
    base = first.anthropic_base_url if name == "anthropic" else first.openai_base_url
    env = {
        "LLM_PROVIDERS": f"{name},google",
        f"{name.upper()}_BASE_URL": base, f"{name.upper()}_API_KEY": "sk-first",
        "GOOGLE_BASE_URL": second.url + "/v1beta/openai/", "GOOGLE_API_KEY": "sk-second",
        "LLM_TIMEOUT_S": "20", "LLM_FIRST_TOKEN_TIMEOUT_S": str(FIRST_TOKEN_S),
        "LLM_STALL_TIMEOUT_S": "0.5",
    }
    for p in (name.upper(), "GOOGLE"):
        env[f"{p}_TPM"], env[f"{p}_RPM"] = str(TPM), "10000"
    return build_router(make_settings(env | extra), redis_client)


def chunks_of(router: Router, attempts: list[Attempt]) -> tuple[list[str], StreamEnd]:
    items = list(router.stream(PLAIN, attempts))
    end = items[-1]
    assert isinstance(end, StreamEnd)
    return [i for i in items if isinstance(i, str)], end


# -- Task A: silence is seen early -----------------------------------------------------------


def test_a_hanging_provider_is_left_within_the_first_token_timeout(first, second,
                                                                    redis_client) -> None:
    router = router_for(first, second, redis_client)
    first.set_mode("hang")  # accepts the connection, never answers

    started = time.monotonic()
    routed = router.route(REQ)
    elapsed = time.monotonic() - started

    assert routed.completion.provider == "google"
    assert isinstance(routed.completion.data, PersonaOutput)  # assembled, then validated
    assert elapsed < FIRST_TOKEN_S + 1.5  # not LLM_TIMEOUT_S (20 s)
    silent, answered = routed.attempts
    assert (silent.outcome, silent.error_class) == (CallOutcome.TIMEOUT, "ProviderTimeout")
    assert "first-token timeout (0.5 s)" in (silent.error or "")
    assert 450 <= silent.latency_ms < 1500
    assert (silent.input_tokens, silent.output_tokens) == (0, 0)  # nothing was produced
    assert (answered.outcome, answered.fallback_from) == (CallOutcome.OK, first.flavor)
    assert router.cooldowns.snapshot([first.flavor])[first.flavor].failures == 1


def test_a_stall_mid_stream_fails_the_attempt_and_charges_what_was_produced(
        first, second, redis_client) -> None:
    name = first.flavor
    # A slow refill (100 tokens/s), so that what the settlement charged shows in the bucket.
    router = router_for(first, second, redis_client, **{f"{name.upper()}_TPM": "6000"})
    first.stall_stream_after(2)

    routed = router.route(REQ)

    stalled, answered = routed.attempts
    assert stalled.outcome == CallOutcome.TIMEOUT and "stalled" in (stalled.error or "")
    assert "stall timeout (0.5 s) after 2 chunks" in (stalled.error or "")
    assert 450 <= stalled.latency_ms < 2000
    # Text was produced: an estimate is charged, never a blind refund to zero.
    assert stalled.input_tokens > 0 and stalled.output_tokens > 0 and stalled.cost_usd > 0
    spent = stalled.input_tokens + stalled.output_tokens
    assert router.limiter.status(name).tokens <= 6000 - spent + 150
    assert answered.provider == "google" and routed.completion.data is not None


def test_a_streaming_caller_falls_back_only_while_it_has_seen_nothing(first, second,
                                                                      redis_client) -> None:
    router = router_for(first, second, redis_client)

    first.stall_stream_after(0)  # the headers, then silence: nothing reached the reader
    attempts: list[Attempt] = []
    text, end = chunks_of(router, attempts)
    assert end.provider == "google" and text
    assert [a.outcome for a in attempts] == [CallOutcome.TIMEOUT, CallOutcome.OK]

    first.stall_stream_after(2)  # two chunks reached the reader, then silence
    before = second.count()
    attempts, got = [], []
    with pytest.raises(E.StreamInterrupted) as exc:
        for item in router.stream(PLAIN, attempts):
            if isinstance(item, str):
                got.append(item)
    assert exc.value.provider == first.flavor and exc.value.partial_text == "".join(got)
    assert len(got) == 2 and second.count() == before  # no other provider's text spliced in
    [row] = attempts
    assert row.outcome == CallOutcome.TIMEOUT and row.output_tokens > 0


@pytest.mark.parametrize("what", ["end", "usage"])
def test_a_stream_cut_without_its_end_is_a_failed_attempt(first, second, redis_client,
                                                          what) -> None:
    # Timeouts well above the fake's pace: what ends this stream is its end, never a stall
    # (on a loaded machine the close can lag the last event by more than the 0.5 s default).
    router = router_for(first, second, redis_client, LLM_STALL_TIMEOUT_S="5",
                        LLM_FIRST_TOKEN_TIMEOUT_S="5")
    first.cut_stream_end(what)  # ends cleanly, but without its end marker (or its usage)

    routed = router.route(REQ)

    cut, answered = routed.attempts
    assert cut.outcome == CallOutcome.SERVER_ERROR and "ended without" in (cut.error or "")
    assert cut.output_tokens > 0  # the text it carried was charged
    assert answered.provider == "google"
    assert router.cooldowns.snapshot([first.flavor])[first.flavor].failures == 1

    first.cut_stream_end(what)  # a streaming reader gets an error, never a short success
    with pytest.raises(E.StreamInterrupted):
        list(router.stream(PLAIN))


def test_a_slow_but_steady_provider_is_not_cut(first, second, redis_client) -> None:
    router = router_for(first, second, redis_client, LLM_STALL_TIMEOUT_S="1.5")
    # Each gap above the first-token timeout (0.5 s) but below the stall timeout, the whole
    # above both: once the reply has begun, only the stall timeout applies.
    first.chunk_delay_s = 0.8
    first.chunk_chars = 300

    routed = router.route(REQ)

    assert [a.outcome for a in routed.attempts] == [CallOutcome.OK]
    assert routed.completion.provider == first.flavor and routed.completion.latency_ms > 1500


# -- Task B: a dead endpoint opens the circuit -----------------------------------------------


def dead_router(first: FakeProvider, second: FakeProvider, redis_client: Any,
                **extra: str) -> Router:
    circuit = {"CIRCUIT_FAILURES": "2", "CIRCUIT_OPEN_S": "0.5", "CIRCUIT_MAX_OPEN_S": "1.5"}
    return router_for(first, second, redis_client, **(circuit | extra))


def wait_half_open(router: Router, name: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not router.cooldowns.snapshot([name])[name].half_open:
        assert time.monotonic() < deadline, "the circuit never half-opened"
        time.sleep(0.02)


def test_503_forever_opens_the_circuit_and_each_opening_doubles_up_to_the_cap(
        first, second, redis_client) -> None:
    router = dead_router(first, second, redis_client)
    name = first.flavor
    first.fail_next(1000, status=503 if name != "anthropic" else 529)  # no Retry-After

    for _ in range(2):
        routed = router.route(REQ)  # no fixed 5 s rest: falls back, and counts
        assert [a.outcome for a in routed.attempts] == [CallOutcome.OVERLOADED, CallOutcome.OK]
    state = router.cooldowns.snapshot([name])[name]
    assert (state.kind, state.circuit, state.opens) == ("circuit_open", "open", 1)
    assert 300 < state.cooling_ms <= 500
    assert "2 failures in a row" in (state.reason or "")

    skipped = router.route(REQ).attempts[0]  # open: skipped without a call, no wait noted
    assert (skipped.outcome, skipped.wait_ms) == (CallOutcome.SKIPPED_COOLDOWN, 0)
    assert "circuit open" in (skipped.error or "") and first.count() == 2

    for opening, open_ms in ((2, 1000), (3, 1500), (4, 1500)):  # doubled, then capped
        wait_half_open(router, name)
        probe = router.route(REQ).attempts[0]
        assert probe.outcome == CallOutcome.OVERLOADED  # the probe reached it, and failed
        state = router.cooldowns.snapshot([name])[name]
        assert (state.circuit, state.opens) == ("open", opening)
        assert open_ms - 300 < state.cooling_ms <= open_ms
        assert "half-open probe failed" in (state.reason or "")
    assert first.count() == 2 + 3


def test_one_probe_across_two_routers_and_its_success_closes_the_circuit(
        first, second, redis_client) -> None:
    one = dead_router(first, second, redis_client, LLM_FIRST_TOKEN_TIMEOUT_S="5")
    other = dead_router(first, second, redis_client, LLM_FIRST_TOKEN_TIMEOUT_S="5")
    name = first.flavor
    first.fail_next(2, status=500)
    one.route(REQ)
    other.route(REQ)  # two workers' failures: one count, shared in Redis
    assert one.cooldowns.snapshot([name])[name].circuit == "open"

    wait_half_open(one, name)
    first.latency_s = 1.0  # the provider is back, a little slow: the probe takes a while
    before = first.count()
    start = threading.Barrier(8)
    answered_by: list[str] = []

    def call(router: Router) -> None:
        start.wait()
        answered_by.append(router.route(REQ).completion.provider)

    threads = [threading.Thread(target=call, args=(r,)) for r in (one, other) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)

    assert first.count() - before == 1  # exactly one probe, across both routers
    assert sorted(answered_by) == sorted([name] + ["google"] * 7)
    state = one.cooldowns.snapshot([name])[name]
    assert (state.circuit, state.opens, state.failures) == ("closed", 0, 0)
    # Closed: everyone calls it again, and the growth is forgotten.
    first.latency_s = 0
    assert other.route(REQ).completion.provider == name
    first.fail_next(2, status=500)
    one.route(REQ)
    one.route(REQ)
    state = one.cooldowns.snapshot([name])[name]
    assert (state.opens, state.circuit) == (1, "open") and state.cooling_ms <= 500


def test_a_503_with_retry_after_is_honoured_and_counts(first, second, redis_client) -> None:
    router = dead_router(first, second, redis_client)
    name = first.flavor
    first.fail_next(status=503 if name != "anthropic" else 529, retry_after_s=3)

    routed = router.route(REQ)

    assert [a.outcome for a in routed.attempts] == [CallOutcome.OVERLOADED, CallOutcome.OK]
    state = router.cooldowns.snapshot([name])[name]
    assert state.kind == "rate_limited" and 2000 < state.cooling_ms <= 3000
    assert state.failures == 1


def test_a_step_left_with_open_circuits_only_fails_with_every_reason(first, second,
                                                                    redis_client) -> None:
    router = dead_router(first, second, redis_client, CIRCUIT_OPEN_S="30",
                         CIRCUIT_MAX_OPEN_S="600")
    name = first.flavor
    first.fail_next(1000, status=500)
    second.set_mode("invalid_json")

    for _ in range(2):
        with pytest.raises(E.AllProvidersFailed):
            router.route(REQ)
    started = time.monotonic()
    with pytest.raises(E.AllProvidersFailed) as exc:  # not RetryLater(the circuit's 30 s)
        router.route(REQ)

    assert time.monotonic() - started < 2
    assert exc.value.transient  # the circuit half-opens later: the same call may succeed
    assert set(exc.value.reasons) == {name, "google"}
    assert "circuit open 30 s" in exc.value.reasons[name]
    assert "server_error" in exc.value.reasons[name]
    assert exc.value.reasons["google"].startswith("invalid_output")
    assert first.count() == 2


def test_a_late_failure_while_open_does_not_grow_the_circuit(redis_client) -> None:
    from masterplan.llm.cooldowns import Cooldowns
    from tests.conftest import RUN_PREFIX

    cd = Cooldowns(redis_client, circuit_failures=2, circuit_open_s=5, circuit_max_open_s=60,
                   prefix=RUN_PREFIX)
    assert not cd.failed("p", "timeout: one")
    assert cd.failed("p", "timeout: two")
    # Calls that were in flight when it opened fail afterwards: they say nothing new.
    assert not cd.failed("p", "timeout: three")
    assert not cd.failed("p", "timeout: four")
    state = cd.snapshot(["p"])["p"]
    assert (state.opens, state.circuit) == (1, "open") and 4000 < state.cooling_ms <= 5000
    # One probe at a time, released only by its holder.
    token = cd.probe("p")
    assert token and cd.probe("p") is None
    cd.release_probe("p", "not-the-holder")
    assert cd.probe("p") is None
    cd.release_probe("p", token)
    assert cd.probe("p") is not None
    cd.clear("p")
