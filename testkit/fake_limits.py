"""Errors and rate limits of the fake provider: provider-shaped error bodies, 429 messages,
remaining-capacity headers and the token bucket behind them.

Pure, apart from the clock; `fake_provider` puts them on a socket.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from masterplan.ratelimit.day import ROLLING, day_bounds_ms
from testkit.fake_wire import Api, new_id

# ---------------------------------------------------------------- errors

_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: (
        "invalid_request_error",
        "context_length_exceeded",
        (
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 131072 tokens. Please reduce the length of the messages."
        ),
    ),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", None, "You are not allowed to access this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_GOOGLE_MESSAGES = {
    400: "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    401: "API key not valid. Please pass a valid API key.",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed your organization's rate limit."),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    529: ("overloaded_error", "Overloaded"),
}


def style_for(flavor: str, api: Api) -> str:
    """The error/header style of a response: the flavour when it speaks this API, else the API's."""
    if (flavor == "anthropic") == (api == "anthropic"):
        return flavor
    return api


# Gemini's QuotaFailure of a 429: (quotaMetric, quotaId) by bucket.
_GOOGLE_QUOTAS = {
    "tokens": ("generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
               "GenerateContentInputTokensPerModelPerMinute-FreeTier"),
    "requests": ("generativelanguage.googleapis.com/generate_content_free_tier_requests",
                 "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
    "tokens-day": ("generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
                   "GenerateContentInputTokensPerModelPerDay-FreeTier"),
    "requests-day": ("generativelanguage.googleapis.com/generate_content_free_tier_requests",
                     "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
}


def error_body(
    style: str, status: int, message: str | None = None, *, retry_after_s: float | None = None,
    err_type: str | None = None, code: str | None = None, quota: str = "tokens",
) -> dict[str, Any] | list[Any]:
    """A provider-shaped error body for `status` (`message`/`err_type`/`code` override).
    `quota`: the bucket a Gemini 429 names in its QuotaFailure (tokens, requests, tokens-day,
    requests-day)."""
    if style == "anthropic":
        etype, msg = _ANTHROPIC_ERRORS.get(status, ("api_error", f"HTTP {status}"))
        return {
            "type": "error",
            "error": {"type": err_type or etype, "message": message or msg},
            "request_id": new_id("req_"),
        }
    if style == "gemini":
        msg = message or _GOOGLE_MESSAGES.get(status, f"HTTP {status}")
        err: dict[str, Any] = {
            "code": status,
            "message": msg,
            "status": _GOOGLE_STATUS.get(status, "UNKNOWN"),
        }
        if status == 429:
            delay = math.ceil(retry_after_s) if retry_after_s is not None else 60
            metric, quota_id = _GOOGLE_QUOTAS[quota]
            err["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric": metric, "quotaId": quota_id}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
            ]
        return [{"error": err}]
    etype, ecode, msg = _OPENAI_ERRORS.get(status, ("server_error", None, f"HTTP {status}"))
    if style == "groq" and status == 401:
        msg = "Invalid API Key"
    if style == "groq" and status == 503:
        msg = "Service Unavailable"
    body: dict[str, Any] = {
        "message": message or msg,
        "type": err_type or etype,
        "code": code or ecode,
    }
    if style == "openai":
        body["param"] = None
    return {"error": body}


def rate_limit_message(
    style: str, model: str, *, kind: str, limit: int, used: int, requested: int, wait_s: float,
    per: str | None = None,
) -> str:
    """The 429 message of a spent per-minute limit (`per` names another window, for Groq)."""
    per = per or ("tokens per minute (TPM)" if kind == "tokens" else "requests per minute (RPM)")
    if style == "groq":
        return (
            f"Rate limit reached for model `{model}` in organization `org_fake` service tier "
            f"`on_demand` on {per}: Limit {limit}, Used {used}, Requested {requested}. "
            f"Please try again in {go_duration(wait_s)}. Need more tokens? Upgrade to Dev Tier "
            "today at https://console.groq.com/settings/billing"
        )
    if style == "gemini":
        return (
            "You exceeded your current quota, please check your plan and billing details. "
            f"* Quota exceeded for metric: {per}, limit: {limit}, model: {model}\n"
            f"Please retry in {wait_s:.1f}s."
        )
    if style == "anthropic":
        what = "input tokens per minute" if kind == "tokens" else "requests per minute"
        return (
            f"This request would exceed the rate limit for your organization of {limit} {what}. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits."
        )
    per = per.replace("minute", "min")
    return (
        f"Rate limit reached for {model} in organization org-fake on {per}: Limit {limit}, "
        f"Used {used}, Requested {requested}. Please try again in {go_duration(wait_s)}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )


def daily_limit_message(
    style: str, model: str, *, kind: str, limit: int, used: int, requested: int, wait_s: float
) -> str:
    """The 429 message of a spent daily quota, in each provider's words."""
    per = "tokens per day (TPD)" if kind == "tokens" else "requests per day (RPD)"
    if style == "groq":
        return rate_limit_message(style, model, kind=kind, limit=limit, used=used,
                                  requested=requested, wait_s=wait_s, per=per)
    if style == "gemini":
        metric = "input_token_count" if kind == "tokens" else "requests"
        return (
            "You exceeded your current quota, please check your plan and billing details. "
            f"* Quota exceeded for metric: generativelanguage.googleapis.com/"
            f"generate_content_free_tier_{metric}, limit: {limit}, model: {model}\n"
            f"Please retry in {wait_s:.1f}s."
        )
    if style == "anthropic":
        what = "input tokens per day" if kind == "tokens" else "requests per day"
        return (
            f"This request would exceed the rate limit for your organization of {limit} {what}. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits."
        )
    return (
        f"Rate limit reached for {model} in organization org-fake on {per}: Limit {limit}, "
        f"Used {used}, Requested {requested}. Please try again in {go_duration(wait_s)}. "
        "Visit https://platform.openai.com/account/rate-limits to learn more."
    )


def too_large_message(style: str, model: str, *, limit: int, requested: int) -> str:
    if style == "groq":
        return (
            f"Request too large for model `{model}` in organization `org_fake` service tier "
            f"`on_demand` on tokens per minute (TPM): Limit {limit}, Requested {requested}, "
            "please reduce your message size and try again."
        )
    return (
        f"Request too large for {model} on tokens per min (TPM): Limit {limit}, Requested "
        f"{requested}. The input or output tokens must be reduced in order to run successfully."
    )


# ---------------------------------------------------------------- headers


def go_duration(seconds: float) -> str:
    """A duration as Go prints it, to the millisecond: "120ms", "6.5s", "1m2s", "1h0m0s"."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return out + secs + "s"


def rfc3339_in(seconds: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=max(0.0, seconds))
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class BucketState:
    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


class Bucket:
    """A token bucket with continuous refill, `limit` per `period_s` (a minute unless said; a
    rolling day is 86,400 s), on `time.monotonic`.

    Not locked: its owner holds one lock around every use, so admission of tokens and requests
    is one atomic step.
    """

    def __init__(self, per_minute: int, capacity: int | None = None, *,
                 period_s: float = 60.0) -> None:
        self.limit = per_minute
        self.capacity = capacity if capacity is not None else per_minute
        self.rate = per_minute / period_s  # per second
        self.level = float(self.capacity)
        self.stamp = time.monotonic()

    def refill(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.level = min(float(self.capacity), self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits (0 if it fits now; inf if it never can)."""
        if amount > self.capacity or self.rate <= 0:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def state(self) -> BucketState:
        reset = (self.capacity - self.level) / self.rate if self.rate > 0 else 0.0
        return BucketState(self.limit, max(0, math.floor(self.level)), max(0.0, reset))


class DayWindow:
    """A fixed daily window: `limit` a day, full again at midnight in the zone `day_reset`, on
    the wall clock (the `now` its owner passes, a monotonic time, is not used).

    Not locked, like `Bucket`; the same surface (`level`, `capacity`, `refill`, `wait_for`,
    `state`) so that the owner admits a call into it the same way.
    """

    def __init__(self, limit: int, day_reset: str = "UTC") -> None:
        self.limit = self.capacity = limit
        self.day_reset = day_reset
        self.level = float(limit)
        self.ends = day_bounds_ms(day_reset, int(time.time() * 1000))[1] / 1000

    def refill(self, now: float | None = None) -> None:
        wall = time.time()
        if wall >= self.ends:
            self.level = float(self.capacity)
            self.ends = day_bounds_ms(self.day_reset, int(wall * 1000))[1] / 1000

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` fits: 0 now, the rest of the day, or inf if it never can."""
        if amount > self.capacity:
            return math.inf
        return 0.0 if self.level >= amount else max(0.0, self.ends - time.time())

    def state(self) -> BucketState:
        reset = max(0.0, self.ends - time.time()) if self.level < self.capacity else 0.0
        return BucketState(self.limit, max(0, math.floor(self.level)), reset)


def day_bucket(limit: int, day_reset: str) -> Bucket | DayWindow:
    """The bucket of a daily cap: refilled continuously ("rolling", as Groq counts) or a fixed
    window reset at midnight in the zone `day_reset` (as Gemini does, at Pacific midnight)."""
    if day_reset == ROLLING:
        return Bucket(limit, period_s=86_400.0)
    return DayWindow(limit, day_reset)


def limit_headers(
    style: str, tokens: BucketState | None, requests: BucketState | None
) -> dict[str, str]:
    """The remaining-capacity headers a provider sends on every response."""
    out: dict[str, str] = {}
    for name, state in (("tokens", tokens), ("requests", requests)):
        if state is None:
            continue
        if style in ("openai", "groq"):
            out[f"x-ratelimit-limit-{name}"] = str(state.limit)
            out[f"x-ratelimit-remaining-{name}"] = str(state.remaining)
            out[f"x-ratelimit-reset-{name}"] = go_duration(state.reset_s)
        elif style == "anthropic":
            out[f"anthropic-ratelimit-{name}-limit"] = str(state.limit)
            out[f"anthropic-ratelimit-{name}-remaining"] = str(state.remaining)
            out[f"anthropic-ratelimit-{name}-reset"] = rfc3339_in(state.reset_s)
    return out


def retry_headers(style: str, retry_after_s: float | None) -> dict[str, str]:
    """`retry-after` (whole seconds, rounded up) and `retry-after-ms`; Gemini sends neither."""
    if retry_after_s is None or style == "gemini":
        return {}
    return {
        "retry-after": str(max(1, math.ceil(retry_after_s))),
        "retry-after-ms": str(max(1, math.ceil(retry_after_s * 1000))),
    }


# ---------------------------------------------------------------- probabilistic faults

# What a provider's servers answer when they fail: Anthropic's overload is its own 529.
_SERVER_ERRORS = {"anthropic": (500, 529)}
_DEFAULT_SERVER_ERRORS = (500, 503)


@dataclass(frozen=True, slots=True)
class Draw:
    """The faults chosen for one request: a server error status (or None), a cut reply."""

    error_status: int | None
    cut: bool


class Faults:
    """Seeded random faults: `error_rate` of requests answer a 5xx (or 529 in the Anthropic
    style) and `truncate_rate` of the answered ones get their content cut in the middle.

    Every request takes the same three draws from the generator whatever its fate, so a seed
    gives the same sequence of faults for the same sequence of requests. Not locked: its owner
    holds one lock around every use.
    """

    def __init__(self, error_rate: float = 0.0, truncate_rate: float = 0.0,
                 seed: int | None = None) -> None:
        self.configure(error_rate=error_rate, truncate_rate=truncate_rate, seed=seed)
        self.counts = {"error": 0, "truncated": 0}

    def configure(self, *, error_rate: float | None = None, truncate_rate: float | None = None,
                  seed: int | None = None) -> None:
        for name, rate in (("error_rate", error_rate), ("truncate_rate", truncate_rate)):
            if rate is not None and not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if error_rate is not None:
            self.error_rate = float(error_rate)
        if truncate_rate is not None:
            self.truncate_rate = float(truncate_rate)
        if seed is not None or not hasattr(self, "rng"):
            self.seed = seed
            self.rng = random.Random(seed)

    def draw(self, style: str) -> Draw:
        u_error, u_cut, u_pick = self.rng.random(), self.rng.random(), self.rng.random()
        if u_error < self.error_rate:
            statuses = _SERVER_ERRORS.get(style, _DEFAULT_SERVER_ERRORS)
            self.counts["error"] += 1
            return Draw(statuses[int(u_pick * len(statuses))], False)
        return Draw(None, u_cut < self.truncate_rate)

    def state(self) -> dict[str, Any]:
        return {"error_rate": self.error_rate, "truncate_rate": self.truncate_rate,
                "seed": self.seed, **self.counts}
