"""The fake provider's daily caps and its two ways of settling a call, through the real SDKs."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest

from masterplan.ratelimit.day import next_reset_ms
from testkit.fake_provider import FakeProvider
from tests.testkit.test_fake_provider import fake_process

KEY = "sk-test"
MESSAGES = [{"role": "user", "content": "hello there"}]  # 3 tokens


def oai(fake: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.openai_base_url, api_key=KEY, max_retries=0)


def small(client: openai.OpenAI, max_tokens: int = 50) -> object:
    return client.chat.completions.with_raw_response.create(
        model="m", messages=MESSAGES, max_tokens=max_tokens)  # type: ignore[arg-type]


def until_utc_midnight_s() -> float:
    now_ms = int(time.time() * 1000)
    reset = next_reset_ms("UTC", now_ms)
    assert reset is not None
    return (reset - now_ms) / 1000


def test_groq_requests_per_day_429_with_its_day_in_the_request_headers() -> None:
    with FakeProvider(flavor="groq", api_key=KEY, rpm=30, rpd=2) as fake:
        first = small(oai(fake))
        # Groq's x-ratelimit-*-requests are about its requests per day.
        assert first.headers["x-ratelimit-limit-requests"] == "2"  # type: ignore[attr-defined]
        assert first.headers["x-ratelimit-remaining-requests"] == "1"  # type: ignore[attr-defined]
        small(oai(fake))
        with pytest.raises(openai.RateLimitError) as exc:
            small(oai(fake))
        err = exc.value.body
        assert isinstance(err, dict)
        assert "on requests per day (RPD): Limit 2, Used 2, Requested 1" in err["message"]
        assert err["type"] == "requests" and err["code"] == "rate_limit_exceeded"
        h = exc.value.response.headers
        assert h["x-ratelimit-remaining-requests"] == "0"
        assert abs(int(h["retry-after"]) - until_utc_midnight_s()) <= 2  # a fixed UTC day
        assert fake.stats()["day"] == {"tokens": None, "requests": 0}


def test_gemini_tokens_per_day_429_names_its_per_day_quota() -> None:
    with FakeProvider(flavor="gemini", api_key=KEY, tpd=100, day_reset="America/Los_Angeles") as fake:
        small(oai(fake), max_tokens=40)
        with pytest.raises(openai.RateLimitError) as exc:
            small(oai(fake), max_tokens=80)
        body = exc.value.body
        assert isinstance(body, list)  # Gemini's list form
        details = {d["@type"].rsplit(".", 1)[1]: d for d in body[0]["error"]["details"]}
        assert details["QuotaFailure"]["violations"][0]["quotaId"] == (
            "GenerateContentInputTokensPerModelPerDay-FreeTier")
        now_ms = int(time.time() * 1000)
        until = (next_reset_ms("America/Los_Angeles", now_ms) or 0) - now_ms
        assert abs(int(details["RetryInfo"]["retryDelay"].rstrip("s")) * 1000 - until) <= 2_000


def test_anthropic_daily_429() -> None:
    with FakeProvider(flavor="anthropic", api_key=KEY, rpd=1) as fake:
        client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=KEY, max_retries=0)
        client.messages.create(model="m", max_tokens=10, messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as exc:
            client.messages.create(model="m", max_tokens=10, messages=MESSAGES)  # type: ignore[arg-type]
        assert "requests per day" in str(exc.value)
        assert abs(int(exc.value.response.headers["retry-after"]) - until_utc_midnight_s()) <= 2


def test_a_rolling_day_refills_as_it_goes() -> None:
    with FakeProvider(flavor="openai", api_key=KEY, rpd=86_400, day_reset="rolling") as fake:
        small(oai(fake))
        day = fake.stats()["day"]
        assert day == {"tokens": None, "requests": 86_399}
        time.sleep(1.05)  # one request a second
        small(oai(fake))
        assert fake.stats()["day"]["requests"] == 86_399


def test_reserved_counting_keeps_max_tokens_and_actual_refunds_it() -> None:
    with FakeProvider(flavor="openai", api_key=KEY, tpm=1_000, tpd=10_000) as actual, \
            FakeProvider(flavor="openai", api_key=KEY, tpm=1_000, tpd=10_000,
                         limit_counts="reserved") as reserved:
        for fake in (actual, reserved):
            r = small(oai(fake), max_tokens=200)
            assert int(r.headers["x-ratelimit-remaining-tokens"]) >= 0  # type: ignore[attr-defined]
        used = actual.calls[0].input_tokens + actual.calls[0].output_tokens
        assert used < 203
        assert actual.calls[0].charged == used
        assert reserved.calls[0].charged == 3 + 200  # the prompt and all of max_tokens
        assert actual.stats()["day"]["tokens"] == 10_000 - used
        assert reserved.stats()["day"]["tokens"] == 10_000 - 203
        assert reserved.stats()["limit_counts"] == "reserved"


def test_subprocess_daily_and_reserved_flags() -> None:
    with fake_process("--rpd", "1", "--tpd", "5000", "--day-reset", "rolling",
                      "--limit-counts", "reserved") as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError, match="requests per day"):
            client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
        stats = httpx.get(url + "/_fake/stats").json()
        assert stats["limit_counts"] == "reserved"
        assert stats["day"] == {"tokens": 5_000 - 103, "requests": 0}
