"""A streamed call and a completion take the same path through the router: admission,
settlement, what the provider's headers say, the circuit, the ledger rows and the log lines.

Every test runs both ways of reading the reply, through the real SDKs against the fake provider,
with cooldowns and buckets on real Redis.
"""

from __future__ import annotations

import contextlib
import logging
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
from masterplan.ratelimit import reservation_tokens
from testkit.fake_provider import FakePrompt, FakeProvider
from tests.conftest import make_settings

# A plain request: a stream carries text, and the same request is completed for comparison.
REQ = LLMRequest("You are terse.", persona_request("market", "an idea", None).messages,
                 max_tokens=300, tags={"stage": "market", "job_id": "job-1"})
TPM = 6000

HOW = ("complete", "stream")


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeProvider]]:
    """Groq (the OpenAI SDK) then Anthropic (its own SDK); both send remaining-capacity
    headers and both limit the key to TPM tokens a minute."""
    with FakeProvider(flavor="groq", api_key="sk-grq", tpm=TPM, rpm=1000) as q, \
            FakeProvider(flavor="anthropic", api_key="sk-ant", tpm=TPM, rpm=1000) as a:
        yield {"groq": q, "anthropic": a}


def router_for(fakes: dict[str, FakeProvider], redis_client: Any, chain: str) -> Router:
    env = {
        "LLM_PROVIDERS": chain,
        "GROQ_BASE_URL": fakes["groq"].openai_base_url, "GROQ_API_KEY": "sk-grq",
        "ANTHROPIC_BASE_URL": fakes["anthropic"].anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant",
    }
    for name in ("GROQ", "ANTHROPIC"):
        env[f"{name}_TPM"], env[f"{name}_RPM"] = str(TPM), "1000"
    return build_router(make_settings(env), redis_client)


def call(router: Router, how: str) -> list[Attempt]:
    """One call, read whole or streamed; its ledger rows, whatever it raised."""
    attempts: list[Attempt] = []
    with contextlib.suppress(E.RetryLater, E.AllProvidersFailed):
        if how == "complete":
            router.route(REQ, attempts=attempts)
        else:
            items = list(router.stream(REQ, attempts))
            assert isinstance(items[-1], StreamEnd)
            assert all(isinstance(i, str) for i in items[:-1]) and len(items) > 1
    return attempts


def slow_crash(prompt: FakePrompt) -> str:
    time.sleep(0.25)
    raise RuntimeError("the model crashed")  # the fake answers 500, a quarter second late


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("provider", ["groq", "anthropic"])
def test_a_reply_lowers_the_bucket_to_the_remaining_capacity_the_provider_reports(
        fakes, redis_client, how, provider) -> None:
    router = router_for(fakes, redis_client, provider)
    fakes[provider].consume(4800)  # another client of the same key, behind our back

    [row] = call(router, how)

    assert row.outcome == CallOutcome.OK and row.input_tokens > 0 and row.cost_usd > 0
    # Lowered to what the provider said remains, not our own count of what we used.
    assert router.limiter.status(provider).tokens <= TPM - 4800


@pytest.mark.parametrize("how", HOW)
def test_a_reply_resets_the_circuit_breakers_count(fakes, redis_client, how) -> None:
    router = router_for(fakes, redis_client, "groq")
    router.cooldowns.failed("groq", "server_error")
    router.cooldowns.failed("groq", "timeout")
    assert router.cooldowns.snapshot(["groq"])["groq"].failures == 2

    assert [a.outcome for a in call(router, how)] == ["ok"]

    assert router.cooldowns.snapshot(["groq"])["groq"].failures == 0
    router.cooldowns.failed("groq", "server_error")  # one more is not the third in a row
    assert router.cooldowns.snapshot(["groq"])["groq"].available


@pytest.mark.parametrize("how", HOW)
def test_an_error_row_has_its_latency_and_counts_towards_the_circuit(fakes, redis_client, how
                                                                     ) -> None:
    router = router_for(fakes, redis_client, "groq,anthropic")
    fakes["groq"].responder = slow_crash

    failed, answered = call(router, how)

    assert (failed.provider, failed.outcome, failed.error_class) == (
        "groq", "server_error", "ServerError")
    assert failed.latency_ms >= 200
    assert (answered.provider, answered.outcome, answered.fallback_from) == (
        "anthropic", "ok", "groq")
    assert router.cooldowns.snapshot(["groq"])["groq"].failures == 1
    # The failed call's reservation was handed back in full.
    reserved = reservation_tokens(REQ.prompt_chars, REQ.max_tokens)
    assert router.limiter.status("groq").tokens > TPM - reserved // 2


@pytest.mark.parametrize("how", HOW)
def test_a_429_cools_the_provider_down_and_drains_its_bucket(fakes, redis_client, how) -> None:
    router = router_for(fakes, redis_client, "groq,anthropic")
    fakes["groq"].fail_next(status=429, retry_after_s=3)
    t0 = time.monotonic()

    assert [(a.provider, a.outcome) for a in call(router, how)] == [
        ("groq", "rate_limited"), ("anthropic", "ok")]

    state = router.cooldowns.snapshot(["groq"])["groq"]
    assert state.kind == "rate_limited" and 2_000 < state.cooling_ms <= 3_000
    # Drained: at most what has refilled since (TPM / 60 a second) is back.
    assert router.limiter.status("groq").tokens <= TPM * (time.monotonic() - t0) / 60 + 1


@pytest.mark.parametrize("how", HOW)
def test_every_attempt_is_logged_with_its_context(fakes, redis_client, caplog, how) -> None:
    router = router_for(fakes, redis_client, "groq,anthropic")
    fakes["groq"].fail_next(status=503)

    with caplog.at_level(logging.INFO, logger="masterplan.llm.router"):
        call(router, how)

    lines = [r for r in caplog.records if r.getMessage().startswith("llm ")]
    assert [(r.provider, r.outcome, r.levelno) for r in lines] == [  # type: ignore[attr-defined]
        ("groq", "overloaded", logging.WARNING), ("anthropic", "ok", logging.INFO)]
    assert all(r.job_id == "job-1" and r.stage == "market" for r in lines)  # type: ignore[attr-defined]
    assert "after groq" in lines[1].getMessage()


def test_a_stream_and_a_completion_leave_the_same_ledger_rows(fakes, redis_client) -> None:
    rows = {}
    for how in HOW:
        router = router_for(fakes, redis_client, "groq,anthropic")
        fakes["groq"].fail_next(status=500)
        rows[how] = [(a.provider, a.model, a.outcome, a.error_class, a.fallback_from,
                      a.input_tokens > 0, a.output_tokens > 0, a.cost_usd > 0)
                     for a in call(router, how)]
        router.cooldowns.clear("groq")
    assert rows["stream"] == rows["complete"]
    assert [r[2] for r in rows["stream"]] == ["server_error", "ok"]


def test_a_stream_broken_after_its_first_chunk_is_recorded_like_any_error(fakes, redis_client
                                                                           ) -> None:
    router = router_for(fakes, redis_client, "groq,anthropic")
    fakes["groq"].fail_stream_after(2)
    attempts: list[Attempt] = []
    got: list[str] = []

    with pytest.raises(E.StreamInterrupted) as exc:
        for item in router.stream(REQ, attempts):
            if isinstance(item, str):
                got.append(item)

    assert exc.value.provider == "groq" and exc.value.partial_text == "".join(got)
    [row] = attempts
    assert (row.provider, row.outcome) == ("groq", "timeout") and row.latency_ms > 0
    assert router.cooldowns.snapshot(["groq"])["groq"].failures == 1
    assert fakes["anthropic"].count() == 0  # no fallback after the reader saw text


def test_the_stream_reads_the_same_provider_facts_as_a_completion(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, "anthropic")
    whole = router.route(REQ).completion
    *chunks, end = list(router.stream(REQ))

    assert isinstance(end, StreamEnd)
    assert (end.provider, end.model) == (whole.provider, whole.model)
    assert end.usage.input_tokens == whole.usage.input_tokens
    assert end.request_id and whole.request_id and end.request_id != whole.request_id
    assert end.rate_limit is not None and whole.rate_limit is not None


def test_a_stream_falls_back_when_the_provider_is_down(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, "groq,anthropic")
    fakes["groq"].set_mode("down")
    seen: list[int] = []

    attempts: list[Attempt] = []
    items = list(router.stream(REQ, attempts, before_call=lambda n, cfg, r: seen.append(n)))

    assert isinstance(items[-1], StreamEnd) and items[-1].provider == "anthropic"
    assert [(a.provider, a.outcome) for a in attempts] == [("groq", "timeout"), ("anthropic", "ok")]
    assert seen == [0, 1]


def test_the_stub_counts_tokens_with_the_one_estimate() -> None:
    from masterplan.llm.base import Usage
    from masterplan.llm.stub import StubProvider
    from masterplan.ratelimit.estimate import estimate_tokens

    done = StubProvider().complete(REQ)
    assert done.usage == Usage.estimated(REQ, len(done.text))
    assert done.usage.input_tokens == estimate_tokens(REQ.prompt_chars) == -(-REQ.prompt_chars // 4)
    *_, end = list(StubProvider().stream(REQ))
    assert isinstance(end, StreamEnd) and end.usage == done.usage
    assert Usage.estimated(REQ, 0).output_tokens == 0
