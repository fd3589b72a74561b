"""Daily quotas through the router: a configured cap draws no 429 at all, and a provider's own
daily 429 (in each provider's words) cools it down until its day resets, on every worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from masterplan.llm.registry import build_router
from masterplan.llm.router import Router
from masterplan.personas import persona_request
from masterplan.ratelimit.day import next_reset_ms
from testkit.fake_provider import FakeProvider
from tests.conftest import make_settings

REQ = persona_request("market", "a marketplace for used lab equipment", None)
KEY = "sk-day"

# Each flavour as the provider it stands for: its name, its endpoint on the fake.
FLAVORS = {
    "groq": ("groq", lambda f: f.openai_base_url),
    "openai": ("openai", lambda f: f.openai_base_url),
    "gemini": ("google", lambda f: f.url + "/v1beta/openai/"),
    "anthropic": ("anthropic", lambda f: f.anthropic_base_url),
}


def until(zone: str) -> int:
    now_ms = int(time.time() * 1000)
    reset = next_reset_ms(zone, now_ms)
    assert reset is not None
    return reset - now_ms


def router_on(fake: FakeProvider, flavor: str, redis_client: Any, **env: str) -> Router:
    """The flavour's provider first, the stub behind it; no daily cap of ours unless given."""
    name, base = FLAVORS[flavor]
    up = name.upper()
    settings = make_settings({
        "LLM_PROVIDERS": f"{name},stub", f"{up}_BASE_URL": base(fake), f"{up}_API_KEY": KEY,
        f"{up}_TPM": "10000000", f"{up}_RPM": "100000", f"{up}_RPD": "0", f"{up}_TPD": "0",
        **env,
    })
    return build_router(settings, redis_client)


@pytest.fixture
def day_fake(request: pytest.FixtureRequest) -> Iterator[FakeProvider]:
    flavor, day_reset = request.param
    with FakeProvider(flavor=flavor, api_key=KEY, rpd=1, day_reset=day_reset) as fake:
        yield fake


# The fake counts each provider's day as the provider does: Groq's rolls, Gemini's resets at
# midnight Pacific; OpenAI and Anthropic name a reset in retry-after (here UTC midnight).
@pytest.mark.parametrize(("day_fake", "expected_ms"), [
    (("groq", "rolling"), lambda: 86_400_000),  # one request a day: back in 24 h
    (("openai", "UTC"), lambda: until("UTC")),
    (("gemini", "America/Los_Angeles"), lambda: until("America/Los_Angeles")),
    (("anthropic", "UTC"), lambda: until("UTC")),
], indirect=["day_fake"], ids=["groq", "openai", "gemini", "anthropic"])
def test_a_daily_429_cools_the_provider_down_until_its_day_resets(
        day_fake: FakeProvider, expected_ms: Any, redis_client: Any) -> None:
    name = FLAVORS[day_fake.flavor][0]
    router = router_on(day_fake, day_fake.flavor, redis_client)
    assert router.route(REQ).completion.provider == name  # the day's one request
    # Groq's request headers speak of its day ("0 left"), which lowers our minute bucket until
    # its next request refills (0.6 ms at 100,000 RPM): wait for that, so the call is sent.
    deadline = time.monotonic() + 5
    while router.limiter.status(name).requests < 1:
        assert time.monotonic() < deadline, "the minute bucket never refilled a request"

    second = router.route(REQ)  # the provider's day is spent: its 429, then the stub at once
    assert second.completion.provider == "stub"
    assert [(a.provider, a.outcome) for a in second.attempts] == [
        (name, "quota_exhausted"), ("stub", "ok")]
    state = router.cooldowns.snapshot([name])[name]
    assert state.kind == "rate_limited"  # a wait every worker honours, not a disabled key
    assert abs(state.cooling_ms - expected_ms()) < 5_000, (state.cooling_ms, expected_ms())

    third = router.route(REQ)  # no second 429: skipped until the reset
    assert third.attempts[0].outcome == "skipped_cooldown"
    assert day_fake.count(429) == 1 and day_fake.count() == 2


@pytest.mark.parametrize(("flavor", "body", "zone"), [
    ("openai", {"error": {"message": "You have reached your daily request quota.",
                          "type": "requests", "code": "rate_limit_exceeded"}}, "UTC"),
    ("gemini", [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota "
                           "exceeded.", "details": [{
                               "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                               "violations": [{"quotaId": "GenerateRequestsPerDayPerProject"
                                                          "PerModel-FreeTier"}]}]}}],
     "America/Los_Angeles"),
], ids=["openai", "gemini"])
def test_a_daily_429_that_names_no_time_lasts_until_the_days_end(
        flavor: str, body: Any, zone: str, redis_client: Any) -> None:
    with FakeProvider(flavor=flavor, api_key=KEY) as fake:  # type: ignore[arg-type]
        name = FLAVORS[flavor][0]
        router = router_on(fake, flavor, redis_client)
        fake.fail_next(status=429, body=body)
        assert router.route(REQ).completion.provider == "stub"
        state = router.cooldowns.snapshot([name])[name]
        assert abs(state.cooling_ms - until(zone)) < 5_000


def test_a_configured_daily_cap_draws_no_429_and_spills_over(redis_client: Any) -> None:
    # Groq's day rolls: two requests a day come back one every 12 h.
    with FakeProvider(flavor="groq", api_key=KEY, rpd=2, day_reset="rolling") as fake:
        router = router_on(fake, "groq", redis_client, GROQ_RPD="2", GROQ_DAY_RESET="rolling")
        assert [router.route(REQ).completion.provider for _ in range(2)] == ["groq", "groq"]
        third = router.route(REQ)
        assert third.completion.provider == "stub"
        skipped = third.attempts[0]
        assert (skipped.provider, skipped.outcome) == ("groq", "skipped_ratelimit")
        assert 43_190_000 < skipped.wait_ms <= 43_200_000
        status = router.limiter.status("groq")
        assert (status.requests_today, status.request_day_capacity) == (0, 2)
        assert fake.count(429) == 0 and fake.count() == 2


def test_a_fixed_day_waits_for_the_providers_midnight(redis_client: Any) -> None:
    with FakeProvider(flavor="gemini", api_key=KEY, rpd=1, day_reset="America/Los_Angeles") as fake:
        router = router_on(fake, "gemini", redis_client, GOOGLE_RPD="1")  # Pacific by default
        assert router.route(REQ).completion.provider == "google"
        second = router.route(REQ)
        assert second.completion.provider == "stub"
        assert abs(second.attempts[0].wait_ms - until("America/Los_Angeles")) < 5_000
        resets = router.limiter.status("google").day_resets_at_ms
        assert resets == next_reset_ms("America/Los_Angeles", int(time.time() * 1000))
        assert fake.count(429) == 0


# -- the wait of a daily 429, from what each provider sends (pure) ------------------------------

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC, 14:13:20 in Los Angeles (PST)


def test_the_wait_of_a_daily_429_per_provider() -> None:
    from masterplan.llm.wire import daily_quota_wait_ms

    groq_rpd = {"error": {"message": "Rate limit reached for model `llama-3.1-8b-instant` on "
                          "requests per day (RPD): Limit 14400, Used 14400, Requested 1. Please "
                          "try again in 6s.", "type": "requests", "code": "rate_limit_exceeded"}}
    # Groq's x-ratelimit-reset-requests is about its day: the longer of it and retry-after.
    assert daily_quota_wait_ms({"retry-after": "6", "x-ratelimit-reset-requests": "2m59.56s"},
                               groq_rpd, now=NOW) == 179_560
    groq_tpd = {"error": {"message": "Rate limit reached on tokens per day (TPD): Limit 500000, "
                          "Used 499000, Requested 1900. Please try again in 12m3s.",
                          "type": "tokens", "code": "rate_limit_exceeded"}}
    # x-ratelimit-reset-tokens is about the minute: the message says when the day allows it.
    assert daily_quota_wait_ms({"x-ratelimit-reset-tokens": "7.66s",
                                "x-ratelimit-remaining-tokens": "0"}, groq_tpd, now=NOW) == 723_000
    gemini = [{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "36s"}]}}]
    # Gemini's RetryInfo says seconds; its day only resets at midnight Pacific (08:00 UTC).
    assert daily_quota_wait_ms({}, gemini, now=NOW) == 35_200_000
    # Nothing but the word "daily": the day's end, midnight UTC.
    daily = {"error": {"message": "daily limit reached"}}
    assert daily_quota_wait_ms({}, daily, now=NOW) == 6_400_000
    # Just after our midnight the provider's clock is behind: its day turns in moments.
    assert daily_quota_wait_ms({}, daily, now=NOW + 6_400 + 60) == 240_000
    assert daily_quota_wait_ms({}, gemini, now=NOW + 35_200 + 1) == 299_000


@pytest.mark.parametrize("flavor", ["groq", "openai", "gemini", "anthropic"])
def test_the_fakes_daily_429s_are_read_as_daily_quotas(flavor: str) -> None:
    from masterplan import errors as E
    from masterplan.llm.classify import classify_status
    from testkit.fake_limits import daily_limit_message, error_body, retry_headers, style_for

    style = style_for(flavor, "anthropic" if flavor == "anthropic" else "openai")
    for kind in ("requests", "tokens"):
        msg = daily_limit_message(style, "m", kind=kind, limit=10, used=10, requested=1,
                                  wait_s=3_600.0)
        body = error_body(style, 429, msg, retry_after_s=3_600.0, quota=f"{kind}-day",
                          err_type=kind if style in ("openai", "groq") else None)
        err = classify_status(429, retry_headers(style, 3_600.0), body, provider=flavor)
        assert type(err) is E.QuotaExhausted, (flavor, kind)
        if flavor == "gemini":  # the longer of its RetryInfo and midnight Pacific
            assert err.retry_after_ms is not None and err.retry_after_ms >= 3_600_000
        else:
            assert err.retry_after_ms == 3_600_000
