"""Unit tests of the error classification at the adapter boundary (no network)."""

from __future__ import annotations

import email.utils

import anthropic
import httpx2
import openai
import pytest

from masterplan.errors import (
    AuthError,
    BadRequest,
    InvalidOutput,
    Overloaded,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    ServerError,
)
from masterplan.llm.base import RateLimitInfo
from masterplan.llm.classify import (
    classify_status,
    from_anthropic_error,
    from_openai_error,
    redact,
    request_id_from_headers,
)
from masterplan.llm.wire import parse_duration_ms, rate_limit_info, retry_after_ms

NOW = 1_750_000_000.0  # a fixed clock for date-based headers


def rfc3339(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def gemini_429(delay: str = "23s", quota_id: str | None = "PerMinute") -> list[dict]:
    details: list[dict] = []
    if quota_id is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content",
                        "quotaId": f"GenerateRequests{quota_id}PerProjectPerModel-FreeTier",
                    }
                ],
            }
        )
    details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    return [
        {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan and billing "
                "details.",
                "status": "RESOURCE_EXHAUSTED",
                "details": details,
            }
        }
    ]


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("6.5s", 6500),
        ("1m2.3s", 62300),
        ("120ms", 120),
        ("1h0m0s", 3_600_000),
        ("2m59.56s", 179_560),
        ("0s", 0),
        ("8", 8000),
        ("0.25", 250),
        ("1.5µs", 1),
        ("", None),
        ("soon", None),
        ("5 s", None),
    ],
)
def test_parse_duration(text: str, ms: int | None) -> None:
    assert parse_duration_ms(text) == ms


# ------------------------------------------------------------------ retry_after_ms


def test_retry_after_ms_header() -> None:
    assert retry_after_ms({"retry-after-ms": "1234"}, None) == 1234
    assert retry_after_ms({"Retry-After-Ms": "12.2"}, None) == 13  # rounded up


def test_retry_after_seconds_integer_and_fractional() -> None:
    assert retry_after_ms({"retry-after": "7"}, None) == 7000
    assert retry_after_ms({"Retry-After": "1.25"}, None) == 1250


def test_retry_after_http_date() -> None:
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert retry_after_ms({"retry-after": date}, None, now=NOW) == 30_000


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    date = email.utils.formatdate(NOW - 30, usegmt=True)
    assert retry_after_ms({"retry-after": date}, None, now=NOW) == 0


def test_retry_after_garbage_falls_through() -> None:
    assert retry_after_ms({"retry-after": "later"}, None) is None
    assert retry_after_ms({"retry-after": "later", "x-ratelimit-reset-tokens": "2s"}, None) == 2000


def test_openai_reset_headers_take_the_exhausted_bucket() -> None:
    headers = {
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-reset-tokens": "6.5s",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-remaining-tokens": "5000",
    }
    assert retry_after_ms(headers, None) == 120


def test_openai_reset_headers_take_the_larger_when_none_is_exhausted() -> None:
    headers = {"x-ratelimit-reset-requests": "120ms", "x-ratelimit-reset-tokens": "1m2.3s"}
    assert retry_after_ms(headers, None) == 62_300


def test_anthropic_reset_headers() -> None:
    headers = {
        "anthropic-ratelimit-requests-reset": rfc3339(NOW + 5),
        "anthropic-ratelimit-input-tokens-reset": rfc3339(NOW + 40),
        "anthropic-ratelimit-output-tokens-reset": "2030-01-01T00:00:00.123456789Z",
        "anthropic-ratelimit-output-tokens-remaining": "800",
        "anthropic-ratelimit-input-tokens-remaining": "0",
    }
    assert retry_after_ms(headers, None, now=NOW) == 40_000


def test_anthropic_reset_larger_of_tokens_and_requests() -> None:
    headers = {
        "anthropic-ratelimit-requests-reset": rfc3339(NOW + 5),
        "anthropic-ratelimit-tokens-reset": rfc3339(NOW + 12),
    }
    assert retry_after_ms(headers, None, now=NOW) == 12_000


def test_gemini_body_list_form() -> None:
    assert retry_after_ms({}, gemini_429("23s")) == 23_000


def test_gemini_body_dict_form_and_bare_error() -> None:
    body = gemini_429("1.5s")[0]
    assert retry_after_ms({}, body) == 1500
    assert retry_after_ms({}, body["error"]) == 1500  # the openai SDK unwraps "error"


def test_gemini_body_as_json_text() -> None:
    import json

    assert retry_after_ms({}, json.dumps(gemini_429("4s"))) == 4000


def test_groq_message_last_resort() -> None:
    body = {
        "error": {
            "message": "Rate limit reached for model `llama` on tokens per minute (TPM): "
            "Limit 6000, Used 5800, Requested 900. Please try again in 8.5s.",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
    }
    assert retry_after_ms({}, body) == 8500
    body["error"]["message"] = "... Please try again in 1m2.5s. Visit ..."
    assert retry_after_ms({}, body) == 62_500
    assert retry_after_ms({}, "Please retry in 120ms") == 120
    assert retry_after_ms({}, "try again in 3 seconds") == 3000


def test_precedence() -> None:
    everything = {
        "retry-after-ms": "1500",
        "retry-after": "9",
        "x-ratelimit-reset-tokens": "40s",
    }
    body = gemini_429("23s")
    body[0]["error"]["message"] = "Please try again in 77s"
    assert retry_after_ms(everything, body) == 1500
    del everything["retry-after-ms"]
    assert retry_after_ms(everything, body) == 9000
    del everything["retry-after"]
    assert retry_after_ms(everything, body) == 23_000  # RetryInfo before reset headers
    body[0]["error"]["details"] = []
    assert retry_after_ms(everything, body) == 40_000  # reset headers before the message
    del everything["x-ratelimit-reset-tokens"]
    assert retry_after_ms(everything, body) == 77_000
    assert retry_after_ms({}, None) is None
    assert retry_after_ms(None, None) is None


# ------------------------------------------------------------------ rate_limit_info


def test_rate_limit_info_openai_style() -> None:
    info = rate_limit_info(
        {"X-RateLimit-Remaining-Tokens": "5900", "x-ratelimit-remaining-requests": "29"}
    )
    assert info == RateLimitInfo(remaining_tokens=5900, remaining_requests=29)


def test_rate_limit_info_anthropic_style() -> None:
    info = rate_limit_info(
        {
            "anthropic-ratelimit-tokens-remaining": "70000",
            "anthropic-ratelimit-requests-remaining": "49",
        }
    )
    assert info == RateLimitInfo(remaining_tokens=70000, remaining_requests=49)


def test_rate_limit_info_anthropic_split_buckets_take_the_tighter() -> None:
    info = rate_limit_info(
        {
            "anthropic-ratelimit-input-tokens-remaining": "30000",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
        }
    )
    assert info == RateLimitInfo(remaining_tokens=8000, remaining_requests=None)
    only_input = rate_limit_info({"anthropic-ratelimit-input-tokens-remaining": "30000"})
    assert only_input == RateLimitInfo(remaining_tokens=30000)


def test_rate_limit_info_partial_and_absent() -> None:
    assert rate_limit_info({"x-ratelimit-remaining-requests": "3"}) == RateLimitInfo(
        remaining_requests=3
    )
    assert rate_limit_info({}) is None
    assert rate_limit_info(None) is None
    assert rate_limit_info({"x-ratelimit-remaining-tokens": "lots"}) is None


def test_request_id_from_headers() -> None:
    assert request_id_from_headers({"X-Request-Id": "req_1"}) == "req_1"
    assert request_id_from_headers({"request-id": "req_2"}) == "req_2"
    assert request_id_from_headers({}) is None


# ------------------------------------------------------------------ classify_status


def classify(status: int | None, body: object = None, headers: dict | None = None):
    return classify_status(status, headers or {}, body, provider="p", request_id="rid")


def test_429_rate_limited_carries_wait_and_facts() -> None:
    err = classify(429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}},
                   {"retry-after": "3"})
    assert type(err) is RateLimited
    assert (err.retry_after_ms, err.status, err.provider, err.request_id) == (3000, 429, "p", "rid")
    assert err.outcome == "rate_limited"


def test_429_insufficient_quota_is_quota_exhausted() -> None:
    body = {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    assert type(classify(429, body)) is QuotaExhausted
    assert type(classify(429, {"error": body})) is QuotaExhausted


def test_429_daily_limits_are_quota_exhausted() -> None:
    groq_daily = {
        "error": {
            "message": "Rate limit reached for model `llama` on tokens per day (TPD): "
            "Limit 500000, Used 499000. Please try again in 12m3s.",
            "type": "tokens",
            "code": "rate_limit_exceeded",
        }
    }
    err = classify(429, groq_daily)
    assert type(err) is QuotaExhausted
    assert err.retry_after_ms == 723_000
    assert type(classify(429, gemini_429("30s", quota_id="PerDay"))) is QuotaExhausted
    assert type(classify(429, "RequestsPerDay quota exceeded")) is QuotaExhausted
    assert type(classify(429, {"error": {"message": "daily quota reached"}})) is QuotaExhausted


def test_429_gemini_per_minute_is_rate_limited_despite_billing_words() -> None:
    err = classify(429, gemini_429("23s", quota_id="PerMinute"))
    assert type(err) is RateLimited
    assert err.retry_after_ms == 23_000
    no_ids = gemini_429("5s", quota_id=None)
    assert type(classify(429, no_ids)) is RateLimited


def test_429_groq_upgrade_boilerplate_is_rate_limited() -> None:
    body = {
        "error": {
            "message": "Rate limit reached ... on requests per minute (RPM): Limit 30. Please "
            "try again in 2s. Need more tokens? Upgrade to Dev Tier today at "
            "https://console.groq.com/settings/billing",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    assert type(classify(429, body)) is RateLimited


def test_429_anthropic_spend_limit_is_quota() -> None:
    body = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "spend limit reached",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
    }
    assert type(classify(429, body)) is QuotaExhausted
    plain = {"type": "error", "error": {"type": "rate_limit_error", "message": "too fast"}}
    assert type(classify(429, plain)) is RateLimited


@pytest.mark.parametrize("status", [503, 529])
def test_overloaded(status: int) -> None:
    err = classify(status, {"type": "error", "error": {"type": "overloaded_error"}},
                   {"retry-after": "2"})
    assert type(err) is Overloaded
    assert err.retry_after_ms == 2000


@pytest.mark.parametrize("status", [500, 502, 504, 520])
def test_other_5xx_server_error(status: int) -> None:
    assert type(classify(status, "upstream broke")) is ServerError


def test_401_and_403() -> None:
    assert type(classify(401, {"error": {"message": "Invalid API Key"}})) is AuthError
    assert type(classify(403, {"error": {"message": "not allowed"}})) is AuthError
    billing = {"error": {"type": "billing_error", "message": "Billing is not active"}}
    assert type(classify(403, billing)) is QuotaExhausted
    assert type(classify(403, "This API requires billing to be enabled")) is QuotaExhausted


def test_402_quota() -> None:
    assert type(classify(402, None)) is QuotaExhausted


@pytest.mark.parametrize("status", [400, 404, 413, 422, 409])
def test_4xx_bad_request(status: int) -> None:
    assert type(classify(status, {"error": {"message": "prompt is too long"}})) is BadRequest


def test_400_special_cases() -> None:
    gemini_bad_key = [
        {
            "error": {
                "code": 400,
                "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"reason": "API_KEY_INVALID"}],
            }
        }
    ]
    assert type(classify(400, gemini_bad_key)) is AuthError
    credit = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Your credit balance is too low to access the Anthropic API.",
        },
    }
    assert type(classify(400, credit)) is QuotaExhausted
    groq_json = {"error": {"message": "Failed to generate JSON", "code": "json_validate_failed"}}
    assert type(classify(400, groq_json)) is InvalidOutput


@pytest.mark.parametrize("status", [408, 499])
def test_request_timeout_statuses(status: int) -> None:
    assert type(classify(status, None)) is ProviderTimeout


def test_error_inside_a_200_stream_uses_the_body_type() -> None:
    anthropic_event = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    err = classify(200, anthropic_event)
    assert type(err) is Overloaded and err.status == 529
    assert type(classify(200, {"type": "error", "error": {"type": "rate_limit_error"}})) \
        is RateLimited
    assert type(classify(None, {"message": "boom", "type": "server_error"})) is ServerError
    assert type(classify(None, {"message": "?", "code": 429})) is RateLimited
    assert type(classify(None, "no idea")) is ServerError


def test_message_names_provider_and_status_and_hides_keys() -> None:
    body = {"error": {"message": "Incorrect API key provided: sk-proj-abcdef1234567890. Or "
                                 "gsk_ABCDEFGH12345678 or AIzaSyA1234567890abcdefgh or my-secret"}}
    err = classify_status(401, {}, body, provider="groq", secrets=["my-secret"])
    text = str(err)
    assert text.startswith("groq: HTTP 401")
    for leaked in ("sk-proj-abcdef", "gsk_ABCDEFGH", "AIzaSyA123", "my-secret"):
        assert leaked not in text
    assert "[redacted]" in text


def test_message_is_truncated() -> None:
    err = classify(500, {"error": {"message": "x" * 5000}})
    assert len(str(err)) < 400


def test_redact_leaves_ordinary_words() -> None:
    assert redact("task-abcdefgh is fine") == "task-abcdefgh is fine"
    assert redact("Bearer abcdefghijkl") == "[redacted]"


# ------------------------------------------------------------------ SDK exceptions
# Real SDK exception objects over real (unsent) httpx2 responses.


def response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx2.Response:
    req = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")
    return httpx2.Response(status, json=body, headers=headers or {}, request=req)


def test_openai_status_error() -> None:
    body = {"message": "Rate limit reached. Please try again in 1s.", "type": "requests",
            "code": "rate_limit_exceeded"}
    resp = response(429, {"error": body}, {"retry-after-ms": "900", "x-request-id": "req_9"})
    exc = openai.RateLimitError("Error code: 429", response=resp, body=body)
    err = from_openai_error(exc, "groq")
    assert type(err) is RateLimited
    assert (err.retry_after_ms, err.request_id, err.provider, err.status) == (900, "req_9", "groq",
                                                                               429)


def test_openai_gemini_list_body() -> None:
    resp = response(429, gemini_429("11s"))
    exc = openai.RateLimitError("Error code: 429", response=resp, body=gemini_429("11s"))
    err = from_openai_error(exc, "gemini")
    assert type(err) is RateLimited and err.retry_after_ms == 11_000


def test_openai_timeouts_and_connection_errors() -> None:
    req = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")
    assert type(from_openai_error(openai.APITimeoutError(request=req), "p")) is ProviderTimeout
    assert type(from_openai_error(openai.APIConnectionError(request=req), "p")) is ProviderTimeout
    assert type(from_openai_error(httpx2.ReadTimeout("slow", request=req), "p")) \
        is ProviderTimeout


def test_openai_error_chunk_inside_a_stream() -> None:
    req = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")
    exc = openai.APIError("overloaded", req, body={"message": "overloaded",
                                                   "type": "service_unavailable"})
    err = from_openai_error(exc, "p")
    assert type(err) is Overloaded and err.status == 503


def test_anthropic_status_errors() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    exc = anthropic.OverloadedError("Error code: 529", response=response(529, body), body=body)
    assert type(from_anthropic_error(exc, "anthropic")) is Overloaded
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    resp = response(429, body, {"retry-after": "4", "request-id": "req_a"})
    err = from_anthropic_error(anthropic.RateLimitError("429", response=resp, body=body), "a")
    assert type(err) is RateLimited
    assert (err.retry_after_ms, err.request_id) == (4000, "req_a")


def test_anthropic_error_event_inside_a_200_stream() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    exc = anthropic.APIStatusError(str(body), response=response(200, {}), body=body)
    err = from_anthropic_error(exc, "anthropic")
    assert type(err) is Overloaded and err.status == 529


def test_anthropic_raw_transport_errors_mid_stream() -> None:
    req = httpx2.Request("POST", "https://api.example.test/v1/messages")
    for exc in (
        httpx2.RemoteProtocolError("peer closed connection", request=req),
        httpx2.ReadTimeout("timed out", request=req),
        anthropic.APITimeoutError(request=req),
        anthropic.APIConnectionError(request=req),
    ):
        assert type(from_anthropic_error(exc, "anthropic")) is ProviderTimeout


def test_unexpected_exceptions_are_server_errors_and_pass_through() -> None:
    err = from_openai_error(ValueError("bad sk-abcdefghijklmnop"), "p")
    assert type(err) is ServerError and "sk-abcdefghij" not in str(err)
    assert type(from_anthropic_error(KeyError("x"), "p")) is ServerError
    already = RateLimited("p: HTTP 429", provider="p", status=429)
    assert from_openai_error(already, "p") is already
    assert from_anthropic_error(already, "p") is already


def test_secret_given_to_the_mapper_is_redacted() -> None:
    body = {"message": "key hunter2hunter2 rejected"}
    resp = response(401, {"error": body})
    exc = openai.AuthenticationError("401", response=resp, body=body)
    err = from_openai_error(exc, "p", secrets=["hunter2hunter2"])
    assert type(err) is AuthError and "hunter2" not in str(err)
