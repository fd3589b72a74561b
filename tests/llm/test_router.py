"""The router through the real SDKs against local fake providers, with cooldowns on real Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from masterplan import errors as E
from masterplan.llm.registry import build_router
from masterplan.llm.router import Router
from masterplan.personas import persona_request
from masterplan.schemas import PersonaOutput
from testkit.fake_provider import FakeProvider
from tests.conftest import make_settings

REQ = persona_request("market", "a marketplace for used lab equipment", None)


@pytest.fixture
def fakes() -> Iterator[dict[str, FakeProvider]]:
    """Three local providers in the roles of anthropic, google and groq."""
    with FakeProvider(flavor="anthropic", api_key="sk-ant") as a, \
            FakeProvider(flavor="gemini", api_key="sk-goo") as g, \
            FakeProvider(flavor="groq", api_key="sk-grq") as q:
        yield {"anthropic": a, "google": g, "groq": q}


def chain_env(fakes: dict[str, FakeProvider], **extra: str) -> dict[str, str]:
    env = {
        "ANTHROPIC_BASE_URL": fakes["anthropic"].anthropic_base_url, "ANTHROPIC_API_KEY": "sk-ant",
        "GOOGLE_BASE_URL": fakes["google"].url + "/v1beta/openai/", "GOOGLE_API_KEY": "sk-goo",
        "GROQ_BASE_URL": fakes["groq"].openai_base_url, "GROQ_API_KEY": "sk-grq",
    }
    for name in ("ANTHROPIC", "GOOGLE", "GROQ"):
        env[f"{name}_TPM"], env[f"{name}_RPM"] = "10000000", "100000"
    return env | extra


def router_for(fakes: dict[str, FakeProvider], redis_client, **extra: str) -> Router:
    return build_router(make_settings(chain_env(fakes, **extra)), redis_client)


def test_the_chain_is_anthropic_google_groq_and_the_primary_answers(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client)
    routed = router.route(REQ)
    assert router.chain == ["anthropic", "google", "groq"]
    assert routed.completion.provider == "anthropic"
    assert isinstance(routed.completion.data, PersonaOutput)
    assert [a.outcome for a in routed.attempts] == ["ok"]
    assert routed.attempts[0].input_tokens > 0 and routed.attempts[0].cost_usd > 0
    assert (fakes["google"].count(), fakes["groq"].count()) == (0, 0)


def test_a_429_falls_back_at_once_and_the_primary_rests_until_retry_after(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client)
    fakes["anthropic"].fail_next(status=429, retry_after_s=2)

    started = time.monotonic()
    first = router.route(REQ)

    assert time.monotonic() - started < 1.5  # no sleep before falling back
    assert first.completion.provider == "google"
    assert [(a.provider, a.outcome, a.fallback_from) for a in first.attempts] == [
        ("anthropic", "rate_limited", None), ("google", "ok", "anthropic")]
    # While the cooldown lasts, every worker skips the primary without calling it.
    second = router.route(REQ)
    assert second.completion.provider == "google"
    assert second.attempts[0].outcome == "skipped_cooldown" and second.attempts[0].wait_ms > 0
    assert fakes["anthropic"].count() == 1
    time.sleep(2.1)
    assert router.route(REQ).completion.provider == "anthropic"
    assert fakes["anthropic"].count() == 2


def test_gemini_retry_delay_in_the_body_sets_the_cooldown(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="google,groq")
    fakes["google"].fail_next(status=429, retry_after_s=7)
    assert router.route(REQ).completion.provider == "groq"
    state = router.cooldowns.snapshot(["google"])["google"]
    assert 5000 < state.cooling_ms <= 7000


def test_a_shorter_wait_never_shortens_a_cooldown(redis_client) -> None:
    from masterplan.llm.cooldowns import Cooldowns

    cd = Cooldowns(redis_client)
    cd.rate_limited("p", 10_000, "429")
    cd.rate_limited("p", 1_000, "429")
    assert cd.snapshot(["p"])["p"].cooling_ms > 9_000
    cd.rate_limited("p", 20_000, "429")
    assert cd.snapshot(["p"])["p"].cooling_ms > 19_000


def test_no_sdk_level_retries_happen(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client)
    fakes["anthropic"].fail_next(status=500)
    fakes["google"].fail_next(status=503)
    routed = router.route(REQ)
    assert routed.completion.provider == "groq"
    assert (fakes["anthropic"].count(), fakes["google"].count(), fakes["groq"].count()) == (1, 1, 1)
    assert [a.outcome for a in routed.attempts] == ["server_error", "overloaded", "ok"]


def test_consecutive_server_errors_open_the_circuit(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, CIRCUIT_FAILURES="2", LLM_PROVIDERS="anthropic,groq")
    fakes["anthropic"].fail_next(2, status=500)
    router.route(REQ)
    router.route(REQ)
    state = router.cooldowns.snapshot(["anthropic"])["anthropic"]
    assert state.kind == "circuit_open" and state.cooling_ms > 25_000
    router.route(REQ)
    assert fakes["anthropic"].count() == 2  # the open circuit is skipped without a call


def test_a_401_disables_the_provider_and_names_it_in_the_log(fakes, redis_client, caplog) -> None:
    router = router_for(fakes, redis_client, ANTHROPIC_API_KEY="sk-wrong-key-123")
    with caplog.at_level(logging.ERROR):
        routed = router.route(REQ)
    assert routed.completion.provider == "google"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "provider anthropic disabled" in errors[0].getMessage()
    assert "sk-wrong-key-123" not in caplog.text
    state = router.cooldowns.snapshot(["anthropic"])["anthropic"]
    assert state.kind == "disabled" and state.cooling_ms > 3_000_000
    router.route(REQ)
    assert fakes["anthropic"].count() == 1
    assert [r for r in caplog.records if r.levelno == logging.ERROR] == errors  # said once


def test_invalid_json_gets_one_repair_then_the_next_provider(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")
    fakes["groq"].set_mode("invalid_json")
    routed = router.route(REQ)
    assert routed.completion.provider == "google"
    assert [(a.provider, a.outcome) for a in routed.attempts] == [
        ("groq", "invalid_output"), ("groq", "invalid_output"), ("google", "ok")]
    repair = fakes["groq"].calls[1].body["messages"]
    assert repair[-1]["role"] == "user" and "invalid" in repair[-1]["content"]
    assert repair[-2]["role"] == "assistant"


def test_a_repair_that_works_stays_on_the_provider(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")
    original = fakes["groq"].responder
    seen = []

    def once_bad(prompt):
        seen.append(prompt)
        return "{not json" if len(seen) == 1 else original(prompt)

    fakes["groq"].responder = once_bad
    routed = router.route(REQ)
    assert routed.completion.provider == "groq"
    assert [a.outcome for a in routed.attempts] == ["invalid_output", "ok"]


def test_a_key_with_a_trailing_newline_authenticates(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq", GROQ_API_KEY="sk-grq\n")
    assert router.route(REQ).completion.provider == "groq"
    assert fakes["groq"].calls[0].headers["authorization"] == "Bearer sk-grq"


def test_every_provider_cooling_down_means_retry_later_with_the_shortest_wait(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="anthropic,groq")
    router.cooldowns.rate_limited("anthropic", 30_000, "429")
    router.cooldowns.rate_limited("groq", 4_000, "429")
    with pytest.raises(E.RetryLater) as exc:
        router.route(REQ)
    assert 3_000 < exc.value.wait_ms <= 4_000
    assert [a.outcome for a in exc.value.attempts] == ["skipped_cooldown", "skipped_cooldown"]
    assert fakes["anthropic"].count() + fakes["groq"].count() == 0


def test_every_provider_failing_for_good_gives_each_reason(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="anthropic,groq")
    fakes["anthropic"].fail_next(status=400)
    fakes["groq"].set_mode("invalid_json")
    with pytest.raises(E.AllProvidersFailed) as exc:
        router.route(REQ)
    assert set(exc.value.reasons) == {"anthropic", "groq"}
    assert exc.value.reasons["anthropic"].startswith("bad_request")
    assert exc.value.reasons["groq"].startswith("invalid_output")


def test_a_provider_that_is_down_is_a_timeout_and_falls_back(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client)
    fakes["anthropic"].set_mode("down")
    routed = router.route(REQ)
    assert routed.completion.provider == "google"
    assert routed.attempts[0].outcome == "timeout"


def test_the_stream_falls_back_before_the_first_chunk(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")
    fakes["groq"].fail_next(status=503)
    plain = persona_request("market", "idea", None).with_messages()
    from masterplan.llm.base import LLMRequest, StreamEnd

    req = LLMRequest(plain.system, plain.messages, max_tokens=200)
    items = list(router.stream(req))
    assert isinstance(items[-1], StreamEnd) and items[-1].provider == "google"
    assert "".join(i for i in items if isinstance(i, str))


def test_the_stream_does_not_fall_back_after_the_first_chunk(fakes, redis_client) -> None:
    from masterplan.llm.base import LLMRequest

    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq,google")
    fakes["groq"].fail_stream_after(2)
    req = LLMRequest("You are terse.", persona_request("market", "idea", None).messages, max_tokens=300)
    got: list[str] = []
    with pytest.raises(E.StreamInterrupted) as exc:
        for item in router.stream(req):
            if isinstance(item, str):
                got.append(item)
    assert exc.value.provider == "groq"
    assert exc.value.partial_text == "".join(got) and len(got) == 2
    assert fakes["google"].count() == 0


def test_two_call_pattern_streams_text_then_returns_structure(fakes, redis_client) -> None:
    from masterplan.llm.base import LLMRequest
    from masterplan.llm.router import Routed
    from masterplan.llm.streaming import stream_then_structure

    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq")
    req = LLMRequest("You are the market analyst.", REQ.messages, max_tokens=400)
    attempts: list = []
    items = list(stream_then_structure(router, req, PersonaOutput, attempts))
    assert all(isinstance(i, str) for i in items[:-1]) and len(items) > 2
    assert isinstance(items[-1], Routed) and isinstance(items[-1].completion.data, PersonaOutput)
    assert [a.outcome for a in attempts] == ["ok", "ok"]
    # Every call is streamed from the provider, the structured one too (read whole).
    assert [c.streamed for c in fakes["groq"].calls] == [True, True]


def test_an_unreachable_redis_defers_the_call_and_says_why(fakes, caplog) -> None:
    import redis

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    router = build_router(make_settings(chain_env(fakes)), dead)
    with caplog.at_level(logging.WARNING), pytest.raises(E.RetryLater) as exc:
        router.route(REQ)
    assert "Redis" in exc.value.reason and exc.value.wait_ms > 0
    assert "call deferred" in caplog.text
    assert sum(f.count() for f in fakes.values()) == 0  # nothing went through unmetered


def test_the_providers_word_lowers_our_bucket_when_another_client_ate_the_quota(redis_client) -> None:
    with FakeProvider(flavor="groq", api_key="sk-grq", tpm=6000, rpm=1000) as fake:
        env = {"LLM_PROVIDERS": "groq", "GROQ_BASE_URL": fake.openai_base_url,
               "GROQ_API_KEY": "sk-grq", "GROQ_TPM": "6000", "GROQ_RPM": "1000",
               "PERSONA_MAX_TOKENS": "400"}
        router = build_router(make_settings(env), redis_client)
        small = persona_request("market", "an idea", None, max_tokens=400)
        fake.consume(4800)  # another client of the same key, behind our back

        assert router.route(small).completion.provider == "groq"

        ours = router.limiter.status("groq").tokens
        assert ours <= 6000 - 4800  # lowered to what the provider said remains, not our own count
        # The next call does not fit what is left: we wait instead of collecting a 429.
        with pytest.raises(E.RetryLater):
            router.route(small)
        assert fake.count(429) == 0 and fake.count() == 1


def test_a_429_from_the_only_provider_means_retry_after_its_wait(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="groq")
    fakes["groq"].fail_next(status=429, retry_after_s=3)
    with pytest.raises(E.RetryLater) as exc:
        router.route(REQ)
    assert 2_000 < exc.value.wait_ms <= 3_000
    assert [a.outcome for a in exc.value.attempts] == ["rate_limited"]


def test_all_providers_failed_says_whether_a_failure_was_transient(fakes, redis_client) -> None:
    router = router_for(fakes, redis_client, LLM_PROVIDERS="anthropic,groq")
    fakes["anthropic"].fail_next(status=500)
    fakes["groq"].fail_next(status=400)
    with pytest.raises(E.AllProvidersFailed) as exc:
        router.route(REQ)
    assert exc.value.transient  # the 500 may pass: the pipeline retries after a back-off

    fakes["anthropic"].fail_next(status=400)
    fakes["groq"].fail_next(status=400)
    with pytest.raises(E.AllProvidersFailed) as exc:
        router.route(REQ)
    assert not exc.value.transient  # the request itself is refused: retrying will not help
