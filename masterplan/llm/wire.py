"""What providers say on the wire about waiting: retry delays, remaining capacity, error bodies.

Pure parsing, no I/O: headers and bodies in, numbers out. `classify` builds on it.

* `retry_after_ms(headers, body)`: how long the provider asked us to wait, in ms (None: it did
  not say). The precedence is documented on the function.
* `daily_quota_wait_ms(headers, body)`: how long a spent daily quota stays spent, in ms.
* `rate_limit_info(headers)`: the remaining-capacity headers as a `RateLimitInfo`.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from masterplan.llm.base import RateLimitInfo
from masterplan.ratelimit.day import DAY_MS, next_reset_ms

MAX_DETAIL = 300

# ---------------------------------------------------------------------------------------------
# Small parsers
# ---------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|h|m|s)")
_UNIT_MS = {
    "h": 3_600_000.0,
    "m": 60_000.0,
    "s": 1000.0,
    "ms": 1.0,
    "us": 0.001,
    "µs": 0.001,
    "μs": 0.001,
    "ns": 0.000001,
}


def ceil_ms(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


def parse_duration_ms(text: str) -> int | None:
    """A Go duration ("6.5s", "1m2.3s", "120ms", "1h0m0s") or plain seconds ("8", "8.5") -> ms.

    Google's `retryDelay` ("23s", "0.5s") is the same format. None if the text is not one.
    """
    s = text.strip().lower()
    if not s:
        return None
    try:
        return ceil_ms(float(s) * 1000.0)  # bare number: seconds
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        return None
    return ceil_ms(total)


def _now() -> float:
    return time.time()


def _http_date_ms(text: str, now: float) -> int | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return ceil_ms((when.timestamp() - now) * 1000.0)


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _rfc3339_ms(text: str, now: float) -> int | None:
    s = text.strip()
    if not s:
        return None
    s = _FRACTION.sub(r"\1", s)  # fromisoformat takes at most microseconds
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(s)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return ceil_ms((when.timestamp() - now) * 1000.0)


def lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if not headers:
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _int_header(h: Mapping[str, str], name: str) -> int | None:
    raw = h.get(name)
    if raw is None:
        return None
    try:
        return max(0, int(float(raw.strip())))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# Body inspection
# ---------------------------------------------------------------------------------------------


def walk_body(node: object, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every dict inside a decoded JSON body (bounded depth)."""
    if depth > 8:
        return
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_body(value, depth + 1)
    elif isinstance(node, list):
        for value in node[:50]:
            yield from walk_body(value, depth + 1)


def decode_body(body: object) -> object:
    """A body as the SDKs hand it over: a dict, a list, or raw text that may be JSON."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        text = body.strip()
        if text[:1] in ("{", "["):
            try:
                return json.loads(text)
            except ValueError:
                return body
    return body


def retry_info_ms(body: object) -> int | None:
    """Google's `google.rpc.RetryInfo` detail: {"@type": "...RetryInfo", "retryDelay": "23s"}."""
    for node in walk_body(body):
        kind = node.get("@type")
        delay = node.get("retryDelay")
        if isinstance(kind, str) and kind.endswith("RetryInfo") and delay is not None:
            if isinstance(delay, dict):  # the proto-JSON object form {"seconds": 23, "nanos": 0}
                try:
                    secs = float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
                except (TypeError, ValueError):
                    continue
                return ceil_ms(secs * 1000.0)
            ms = parse_duration_ms(str(delay))
            if ms is not None:
                return ms
    return None


def body_messages(body: object) -> list[str]:
    """The human-readable error texts in a body (or the body itself when it is text)."""
    if isinstance(body, str):
        return [body]
    out: list[str] = []
    for node in walk_body(body):
        for key in ("message", "error_description", "detail"):
            value = node.get(key)
            if isinstance(value, str) and value:
                out.append(value)
        value = node.get("error")
        if isinstance(value, str) and value:
            out.append(value)
    return out


def body_codes(body: object) -> set[str]:
    """Machine-readable codes in a body: `code`, `type`, `status`, `reason`, `error_code`."""
    out: set[str] = set()
    for node in walk_body(body):
        for key in ("code", "type", "status", "reason", "error_code"):
            value = node.get(key)
            if isinstance(value, str) and value:
                out.add(value.lower())
            elif isinstance(value, int) and not isinstance(value, bool):
                out.add(str(value))
    return out


_TRY_AGAIN = re.compile(
    r"(?:try\s+again|retry)\s+in\s+((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|h|m|s))+|\d+(?:\.\d+)?"
    r"\s*(?:seconds?|secs?)\b)",
    re.IGNORECASE,
)


def _message_delay_ms(body: object) -> int | None:
    """Groq/OpenAI/Gemini prose: "Please try again in 8.5s" / "Please retry in 23.4s"."""
    for text in body_messages(body):
        m = _TRY_AGAIN.search(text)
        if m:
            raw = re.sub(r"\s*(?:seconds?|secs?)$", "", m.group(1).strip(), flags=re.IGNORECASE)
            ms = parse_duration_ms(raw)
            if ms is not None:
                return ms
    return None


# ---------------------------------------------------------------------------------------------
# retry_after_ms / rate_limit_info
# ---------------------------------------------------------------------------------------------

_ANTHROPIC_RESETS = (
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-reset",
)
_ANTHROPIC_REMAINING = {
    "anthropic-ratelimit-requests-reset": "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-tokens-reset": "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset": "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset": "anthropic-ratelimit-output-tokens-remaining",
}


def _relevant_max(candidates: list[tuple[int, int | None]]) -> int | None:
    """The wait among (ms, remaining) pairs: an exhausted bucket's, else the longest."""
    if not candidates:
        return None
    exhausted = [ms for ms, remaining in candidates if remaining == 0]
    return max(exhausted) if exhausted else max(ms for ms, _ in candidates)


def _header_retry_ms(h: Mapping[str, str], now: float) -> int | None:
    """`retry-after-ms` (milliseconds), else `retry-after` (seconds or an HTTP date)."""
    raw = h.get("retry-after-ms")
    if raw is not None:
        try:
            return ceil_ms(float(raw.strip()))
        except ValueError:
            pass
    raw = h.get("retry-after")
    if raw is not None:
        raw = raw.strip()
        try:
            return ceil_ms(float(raw) * 1000.0)
        except ValueError:
            return _http_date_ms(raw, now)
    return None


def retry_after_ms(
    headers: Mapping[str, str] | None, body: object = None, *, now: float | None = None
) -> int | None:
    """How long the provider asked us to wait before the next call, in ms; None if it did not say.

    Precedence (the first source that yields a value wins):

    1. `retry-after-ms` header: milliseconds, explicit.
    2. `retry-after` header: seconds (possibly fractional) or an HTTP date.
    3. Google's `google.rpc.RetryInfo.retryDelay` in the error body ("23s"), in any of the
       shapes Gemini uses: `[{"error": {...}}]`, `{"error": {...}}` or the bare error object.
       It is about this very error, so it outranks the window-reset headers.
    4. Window-reset headers: `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`
       (Go durations, OpenAI and Groq) and `anthropic-ratelimit-{requests,tokens,input-tokens,
       output-tokens}-reset` (RFC 3339 timestamps, turned into ms from `now`). Among those
       present, the reset of a bucket whose matching `remaining` header is 0 is the relevant
       one; when none says 0 (or remaining is absent) the longest reset is taken.
    5. Last resort: "Please try again in 8.5s" / "Please retry in 23s" in the error message.

    Negative results (a reset already in the past) come back as 0. `now` is epoch seconds, for
    tests; it defaults to the clock.
    """
    h = lower_headers(headers)
    now = _now() if now is None else now

    ms = _header_retry_ms(h, now)
    if ms is not None:
        return ms

    decoded = decode_body(body)
    ms = retry_info_ms(decoded)
    if ms is not None:
        return ms

    candidates: list[tuple[int, int | None]] = []
    for kind in ("requests", "tokens"):
        raw = h.get(f"x-ratelimit-reset-{kind}")
        if raw is not None:
            value = parse_duration_ms(raw)
            if value is not None:
                candidates.append((value, _int_header(h, f"x-ratelimit-remaining-{kind}")))
    for name in _ANTHROPIC_RESETS:
        raw = h.get(name)
        if raw is not None:
            value = _rfc3339_ms(raw, now)
            if value is not None:
                candidates.append((value, _int_header(h, _ANTHROPIC_REMAINING[name])))
    ms = _relevant_max(candidates)
    if ms is not None:
        return ms

    return _message_delay_ms(decoded)


# Gemini: "Requests per day (RPD) quotas reset at midnight Pacific time."
GOOGLE_DAY_RESET = "America/Los_Angeles"
_REQUESTS_PER_DAY = re.compile(r"requests\s+per\s+day|\bRPD\b|RequestsPerDay", re.IGNORECASE)


def google_body(body: object) -> bool:
    """An error body of Google's APIs: a `google.rpc` detail (RetryInfo, QuotaFailure, ...)."""
    for node in walk_body(body):
        kind = node.get("@type")
        if isinstance(kind, str) and "googleapis.com/google.rpc." in kind:
            return True
    return False


# A daily 429 this soon after our midnight is from a provider whose clock has not reached it:
# its day turns within moments, not in 24 hours.
CLOCK_SLACK_MS = 300_000


def until_day_reset_ms(day_reset: str, *, now: float | None = None) -> int:
    """Milliseconds from `now` (epoch seconds) to the next midnight in the zone `day_reset`
    (UTC's for "rolling", which has no midnight of its own); within `CLOCK_SLACK_MS` after a
    midnight, the time until that slack has passed instead."""
    now_ms = math.floor((_now() if now is None else now) * 1000)
    reset = next_reset_ms(day_reset, now_ms) or next_reset_ms("UTC", now_ms)
    assert reset is not None
    since = DAY_MS - (reset - now_ms)
    if 0 <= since < CLOCK_SLACK_MS:
        return CLOCK_SLACK_MS - since
    return reset - now_ms


def daily_quota_wait_ms(
    headers: Mapping[str, str] | None, body: object = None, *, now: float | None = None
) -> int:
    """How long a provider whose daily quota is spent stays spent, in ms (always a value).

    1. What the provider said about this error: `retry-after-ms` / `retry-after`, Google's
       RetryInfo, "Please try again in 12m3s" in the message. The window-reset headers are left
       out: OpenAI's and Groq's `x-ratelimit-reset-tokens` are about the minute.
    2. When the body names requests per day, `x-ratelimit-reset-requests` too, the longer of
       the two: Groq's is always about its requests per day.
    3. A Google body: the longer of that and the next midnight Pacific, where Gemini's per-day
       quotas reset (its RetryInfo on a per-day 429 says seconds, and asking again after them
       only collects the next 429).
    4. None of these: the day's end, the next midnight UTC.
    A midnight that passed less than `CLOCK_SLACK_MS` ago counts as this day's end: the
    provider's clock has not reached it yet, and its day is about to turn.
    """
    h = lower_headers(headers)
    now = _now() if now is None else now
    decoded = decode_body(body)
    stated = _header_retry_ms(h, now)
    if stated is None:
        stated = retry_info_ms(decoded)
    if stated is None:
        stated = _message_delay_ms(decoded)
    raw = h.get("x-ratelimit-reset-requests")
    if raw is not None and any(_REQUESTS_PER_DAY.search(t) for t in body_messages(decoded)):
        reset = parse_duration_ms(raw)
        if reset is not None:
            stated = max(stated or 0, reset)
    if google_body(decoded):
        return max(stated or 0, until_day_reset_ms(GOOGLE_DAY_RESET, now=now))
    return stated if stated is not None else until_day_reset_ms("UTC", now=now)


def rate_limit_info(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """The provider's remaining capacity from response headers; None if it sent none.

    * OpenAI, Groq and other OpenAI-compatible servers: `x-ratelimit-remaining-tokens` and
      `x-ratelimit-remaining-requests`.
    * Anthropic: `anthropic-ratelimit-tokens-remaining` and
      `anthropic-ratelimit-requests-remaining`. Anthropic may send only the split buckets
      `anthropic-ratelimit-input-tokens-remaining` / `-output-tokens-remaining`; then
      `remaining_tokens` is the smaller of those present (the tighter bucket decides).
    """
    h = lower_headers(headers)
    tokens = _int_header(h, "x-ratelimit-remaining-tokens")
    requests = _int_header(h, "x-ratelimit-remaining-requests")
    if tokens is None:
        tokens = _int_header(h, "anthropic-ratelimit-tokens-remaining")
    if tokens is None:
        split = [
            v
            for v in (
                _int_header(h, "anthropic-ratelimit-input-tokens-remaining"),
                _int_header(h, "anthropic-ratelimit-output-tokens-remaining"),
            )
            if v is not None
        ]
        tokens = min(split) if split else None
    if requests is None:
        requests = _int_header(h, "anthropic-ratelimit-requests-remaining")
    if tokens is None and requests is None:
        return None
    return RateLimitInfo(remaining_tokens=tokens, remaining_requests=requests)


# ---------------------------------------------------------------------------------------------
# classify_status
# ---------------------------------------------------------------------------------------------
