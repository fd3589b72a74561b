"""Provider failures classified once, at the adapter boundary.

Everything an adapter knows about a failed call (HTTP status, response headers, error body, the
SDK exception) goes through this module and comes out as exactly one
`masterplan.errors.ProviderError` subclass. Nothing above the adapters looks at status codes,
headers or SDK exception types.

Public functions:

* `retry_after_ms(headers, body)`: how long the provider asked us to wait, in ms (None: it did
  not say). The precedence is documented on the function.
* `rate_limit_info(headers)`: the remaining-capacity headers as a `RateLimitInfo`.
* `classify_status(status, headers, body, provider=..., request_id=...)`: status + body ->
  error class.
* `from_openai_error(exc, provider)` / `from_anthropic_error(exc, provider)`: SDK exception ->
  error, via `classify_status`.

Error messages are built here from the status and the provider's own error text, truncated,
with anything that looks like an API key redacted. SDK messages are never passed through as-is.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from masterplan.errors import (
    AuthError,
    BadRequest,
    InvalidOutput,
    Overloaded,
    ProviderError,
    ProviderTimeout,
    QuotaExhausted,
    RateLimited,
    ServerError,
)
from masterplan.llm.base import RateLimitInfo

__all__ = [
    "classify_status",
    "from_anthropic_error",
    "from_openai_error",
    "parse_duration_ms",
    "rate_limit_info",
    "redact",
    "request_id_from_headers",
    "retry_after_ms",
]

_MAX_DETAIL = 300

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


def _ceil_ms(value: float) -> int:
    return max(0, math.ceil(value - 1e-9))


def parse_duration_ms(text: str) -> int | None:
    """A Go duration ("6.5s", "1m2.3s", "120ms", "1h0m0s") or plain seconds ("8", "8.5") -> ms.

    Google's `retryDelay` ("23s", "0.5s") is the same format. None if the text is not one.
    """
    s = text.strip().lower()
    if not s:
        return None
    try:
        return _ceil_ms(float(s) * 1000.0)  # bare number: seconds
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
    return _ceil_ms(total)


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
    return _ceil_ms((when.timestamp() - now) * 1000.0)


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
    return _ceil_ms((when.timestamp() - now) * 1000.0)


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
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


def _walk(node: object, depth: int = 0) -> Iterator[dict[str, Any]]:
    """Every dict inside a decoded JSON body (bounded depth)."""
    if depth > 8:
        return
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value, depth + 1)
    elif isinstance(node, list):
        for value in node[:50]:
            yield from _walk(value, depth + 1)


def _decode(body: object) -> object:
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


def _retry_info_ms(body: object) -> int | None:
    """Google's `google.rpc.RetryInfo` detail: {"@type": "...RetryInfo", "retryDelay": "23s"}."""
    for node in _walk(body):
        kind = node.get("@type")
        delay = node.get("retryDelay")
        if isinstance(kind, str) and kind.endswith("RetryInfo") and delay is not None:
            if isinstance(delay, dict):  # the proto-JSON object form {"seconds": 23, "nanos": 0}
                try:
                    secs = float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
                except (TypeError, ValueError):
                    continue
                return _ceil_ms(secs * 1000.0)
            ms = parse_duration_ms(str(delay))
            if ms is not None:
                return ms
    return None


def _messages(body: object) -> list[str]:
    """The human-readable error texts in a body (or the body itself when it is text)."""
    if isinstance(body, str):
        return [body]
    out: list[str] = []
    for node in _walk(body):
        for key in ("message", "error_description", "detail"):
            value = node.get(key)
            if isinstance(value, str) and value:
                out.append(value)
        value = node.get("error")
        if isinstance(value, str) and value:
            out.append(value)
    return out


def _codes(body: object) -> set[str]:
    """Machine-readable codes in a body: `code`, `type`, `status`, `reason`, `error_code`."""
    out: set[str] = set()
    for node in _walk(body):
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
    for text in _messages(body):
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
    h = _lower(headers)
    now = _now() if now is None else now

    raw = h.get("retry-after-ms")
    if raw is not None:
        try:
            return _ceil_ms(float(raw.strip()))
        except ValueError:
            pass

    raw = h.get("retry-after")
    if raw is not None:
        raw = raw.strip()
        try:
            return _ceil_ms(float(raw) * 1000.0)
        except ValueError:
            ms = _http_date_ms(raw, now)
            if ms is not None:
                return ms

    decoded = _decode(body)
    ms = _retry_info_ms(decoded)
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


def rate_limit_info(headers: Mapping[str, str] | None) -> RateLimitInfo | None:
    """The provider's remaining capacity from response headers; None if it sent none.

    * OpenAI, Groq and other OpenAI-compatible servers: `x-ratelimit-remaining-tokens` and
      `x-ratelimit-remaining-requests`.
    * Anthropic: `anthropic-ratelimit-tokens-remaining` and
      `anthropic-ratelimit-requests-remaining`. Anthropic may send only the split buckets
      `anthropic-ratelimit-input-tokens-remaining` / `-output-tokens-remaining`; then
      `remaining_tokens` is the smaller of those present (the tighter bucket decides).
    """
    h = _lower(headers)
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

_KEY_PATTERNS = re.compile(
    r"\b(?:sk-ant-[A-Za-z0-9_\-]{6,}|sk-[A-Za-z0-9_\-*]{6,}|gsk_[A-Za-z0-9]{6,}"
    r"|AIza[0-9A-Za-z_\-]{10,}|(?i:bearer)\s+[A-Za-z0-9._\-]{8,})"
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with key-shaped strings (and each of `secrets`, verbatim) replaced by [redacted]."""
    for secret in secrets:
        if secret and len(secret.strip()) >= 4:
            text = text.replace(secret.strip(), "[redacted]")
    return _KEY_PATTERNS.sub("[redacted]", text)


def _detail(body: object) -> str:
    texts = _messages(body)
    if texts:
        text = texts[0]
    elif body is None or body == "":
        text = ""
    else:
        try:
            text = json.dumps(body, separators=(",", ":"), default=str)
        except (TypeError, ValueError):
            text = str(body)
    text = " ".join(text.split())
    return text[:_MAX_DETAIL] + ("…" if len(text) > _MAX_DETAIL else "")


_QUOTA_CODES = {
    "insufficient_quota",
    "billing_error",
    "billing_hard_limit_reached",
    "billing_not_active",
    "contract_spend_limit_reached",
    "enforced_spend_limit_reached",
    "linked_organization_spend_limit_reached",
    "linked_organization_billing_unavailable",
}
_DAILY_TEXT = re.compile(r"per\s*day|perday|\bdaily\b|\bRPD\b|\bTPD\b", re.IGNORECASE)
_BILLING_TEXT = re.compile(
    r"insufficient_quota|billing|credit balance|spend limit|spending limit|payment",
    re.IGNORECASE,
)
_BAD_KEY_TEXT = re.compile(
    r"api[ _]key not valid|invalid api[ _]key|incorrect api key", re.IGNORECASE
)


def _quota_ids(body: object) -> list[str]:
    """Gemini's QuotaFailure violations: their `quotaId`s ("...PerDayPerProjectPerModel...")."""
    out: list[str] = []
    for node in _walk(body):
        for key in ("quotaId", "quota_id"):
            value = node.get(key)
            if isinstance(value, str):
                out.append(value)
    return out


_RATE_CODES = {
    "rate_limit_exceeded",
    "rate_limit_error",
    "rate_limit",
    "resource_exhausted",
    "ramp_limit_exceeded",
    "tokens",
    "requests",
}
_URL = re.compile(r"https?://\S+")


def _texts(body: object) -> list[str]:
    """The body's messages with URLs removed (".../settings/billing" is not about billing)."""
    return [_URL.sub(" ", text) for text in _messages(body)]


def _is_quota_429(body: object) -> bool:
    """A 429 that will not clear in seconds: billing, spend limit or a daily quota.

    Structured signals decide first: a quota code (`insufficient_quota`, Anthropic's spend-limit
    codes, `billing_error`) -> yes; Gemini's QuotaFailure `quotaId`s -> yes only if one is per
    day. Then the text: "per day" / "daily" / RPD / TPD -> yes. Billing words in the text count
    only when no rate-limit code or RetryInfo marks the 429 as an ordinary one: Groq's and
    Gemini's per-minute 429s carry "upgrade ... billing" boilerplate, and a wrongly transient
    verdict costs one more 429 whereas a wrongly permanent one benches the provider for the day.
    """
    codes = _codes(body)
    if codes & _QUOTA_CODES:
        return True
    quota_ids = _quota_ids(body)
    if quota_ids:
        return any(_DAILY_TEXT.search(q) for q in quota_ids)
    texts = _texts(body)
    if any(_DAILY_TEXT.search(text) for text in texts):
        return True
    if codes & _RATE_CODES or _retry_info_ms(body) is not None:
        return False
    return any(_BILLING_TEXT.search(text) for text in texts)


def _is_billing(body: object) -> bool:
    if _codes(body) & _QUOTA_CODES:
        return True
    return any(_BILLING_TEXT.search(text) for text in _texts(body))


# Error `type`/`code` values that appear in error bodies, mapped to the status they stand for.
# Used when the HTTP status does not describe the failure: an error event inside a stream that
# started with 200.
_TYPE_STATUS = {
    "overloaded_error": 529,
    "overloaded": 529,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "rate_limit": 429,
    "resource_exhausted": 429,
    "insufficient_quota": 429,
    "billing_error": 402,
    "api_error": 500,
    "server_error": 500,
    "internal": 500,
    "internal_error": 500,
    "unavailable": 503,
    "service_unavailable": 503,
    "timeout_error": 504,
    "deadline_exceeded": 504,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "unauthenticated": 401,
    "permission_error": 403,
    "permission_denied": 403,
    "not_found_error": 404,
    "not_found": 404,
    "invalid_request_error": 400,
    "invalid_argument": 400,
    "request_too_large": 413,
}


def _status_from_body(body: object) -> int | None:
    for node in _walk(body):
        code = node.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            return code
        if isinstance(code, str) and code.isdigit() and 400 <= int(code) <= 599:
            return int(code)
    codes = _codes(body)
    for name, status in _TYPE_STATUS.items():
        if name in codes:
            return status
    return None


def classify_status(
    status: int | None,
    headers: Mapping[str, str] | None,
    body: object,
    *,
    provider: str,
    request_id: str | None = None,
    secrets: Iterable[str | None] = (),
) -> ProviderError:
    """The one error for a failed HTTP exchange.

    * 429 -> `RateLimited` (with `retry_after_ms`), unless the body says billing, insufficient
      quota, a spend limit or a daily quota ("per day", "PerDay", "RPD"/"TPD", a Gemini
      QuotaFailure whose quotaId is per-day) -> `QuotaExhausted` (also with `retry_after_ms`).
    * 402 -> `QuotaExhausted`.
    * 503, 529 -> `Overloaded`; other 5xx -> `ServerError`.
    * 401 -> `AuthError`; 403 -> `AuthError` unless the body is clearly about billing ->
      `QuotaExhausted`.
    * 400/404/413/422 (and other 4xx) -> `BadRequest`, with three exceptions read from the body:
      a billing text (Anthropic's "credit balance is too low" is a 400) -> `QuotaExhausted`;
      Gemini's "API key not valid" (a 400, reason API_KEY_INVALID) -> `AuthError`; Groq's
      `json_validate_failed` (its JSON mode rejected the model's output) -> `InvalidOutput`.
    * 408 and 499 -> `ProviderTimeout`.
    * A status below 400 or None (an error event inside a stream that began with 200) is
      replaced by the status the body's error type stands for; `ServerError` if it names none.

    `secrets` are redacted from the message verbatim, in addition to key-shaped strings.
    """
    body = _decode(body)
    if status is None or status < 400:
        status = _status_from_body(body) or status
    detail = redact(_detail(body), secrets)
    shown = status if status is not None else "error"
    message = f"{provider}: HTTP {shown}" + (f": {detail}" if detail else "")
    wait = retry_after_ms(headers, body)
    kw: dict[str, Any] = {
        "provider": provider,
        "status": status,
        "retry_after_ms": wait,
        "request_id": request_id,
    }

    if status is None or status < 400:
        return ServerError(message, **kw)
    if status == 429:
        if _is_quota_429(body):
            return QuotaExhausted(message, **kw)
        return RateLimited(message, **kw)
    if status == 402:
        return QuotaExhausted(message, **kw)
    if status in (503, 529):
        return Overloaded(message, **kw)
    if status >= 500:
        return ServerError(message, **kw)
    if status == 401:
        return AuthError(message, **kw)
    if status == 403:
        if _is_billing(body):
            return QuotaExhausted(message, **kw)
        return AuthError(message, **kw)
    if status in (408, 499):
        return ProviderTimeout(message, **kw)
    codes = _codes(body)
    if "api_key_invalid" in codes or any(_BAD_KEY_TEXT.search(t) for t in _messages(body)):
        return AuthError(message, **kw)
    if "json_validate_failed" in codes:
        return InvalidOutput(message, **kw)
    if _is_billing(body):
        return QuotaExhausted(message, **kw)
    return BadRequest(message, **kw)


# ---------------------------------------------------------------------------------------------
# SDK exceptions
# ---------------------------------------------------------------------------------------------


def _transport_classes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(timeout classes, other transport classes) of the HTTP libraries the SDKs use."""
    timeouts: list[type[BaseException]] = [TimeoutError]
    transport: list[type[BaseException]] = [ConnectionError]
    for module_name in ("httpx2", "httpx", "httpcore2", "httpcore"):
        try:
            module = __import__(module_name)
        except ImportError:
            continue
        for name in ("TimeoutException", "TimeoutError"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                timeouts.append(cls)
        for name in ("TransportError", "RequestError", "NetworkError", "ProtocolError"):
            cls = getattr(module, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                transport.append(cls)
    return tuple(timeouts), tuple(transport)


_TRANSPORT: tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]] | None = None


def _transport() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    global _TRANSPORT
    if _TRANSPORT is None:
        _TRANSPORT = _transport_classes()
    return _TRANSPORT


def _headers_of(exc: BaseException) -> Mapping[str, str]:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers if headers is not None else {}


def _from_transport(exc: BaseException, provider: str) -> ProviderError | None:
    timeouts, transport = _transport()
    if isinstance(exc, timeouts):
        return ProviderTimeout(f"{provider}: timed out ({type(exc).__name__})", provider=provider)
    if isinstance(exc, transport):
        return ProviderTimeout(
            f"{provider}: connection failed ({type(exc).__name__})", provider=provider
        )
    return None


def _unexpected(exc: BaseException, provider: str, secrets: Iterable[str | None]) -> ServerError:
    text = redact(" ".join(str(exc).split())[:_MAX_DETAIL], secrets)
    return ServerError(f"{provider}: unexpected {type(exc).__name__}: {text}", provider=provider)


def from_openai_error(
    exc: BaseException, provider: str, *, secrets: Iterable[str | None] = ()
) -> ProviderError:
    """The `ProviderError` for an exception raised by the `openai` SDK (or its HTTP layer).

    * `APIStatusError` (any HTTP 4xx/5xx) -> `classify_status(.status_code, headers, .body)`.
    * `APITimeoutError`, `APIConnectionError` and raw HTTP transport errors -> `ProviderTimeout`.
    * A bare `APIError` (an `{"error": ...}` chunk inside a stream that began with 200) ->
      `classify_status(None, ..., .body)`, which reads the status from the body's code/type.
    * Anything else -> `ServerError`. A `ProviderError` is returned unchanged.
    """
    import openai

    if isinstance(exc, ProviderError):
        return exc
    secrets = tuple(secrets)
    if isinstance(exc, openai.APIStatusError):
        headers = _headers_of(exc)
        request_id = getattr(exc, "request_id", None) or request_id_from_headers(headers)
        return classify_status(
            exc.status_code, headers, exc.body, provider=provider, request_id=request_id,
            secrets=secrets,
        )
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{provider}: request timed out", provider=provider)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderTimeout(f"{provider}: connection failed", provider=provider)
    if isinstance(exc, openai.APIResponseValidationError):
        return ServerError(
            f"{provider}: response did not match the API's schema",
            provider=provider,
            status=exc.status_code,
        )
    if isinstance(exc, openai.APIError):
        body = exc.body if exc.body is not None else exc.message
        return classify_status(None, {}, body, provider=provider, secrets=secrets)
    transport = _from_transport(exc, provider)
    if transport is not None:
        return transport
    return _unexpected(exc, provider, secrets)


def from_anthropic_error(
    exc: BaseException, provider: str, *, secrets: Iterable[str | None] = ()
) -> ProviderError:
    """The `ProviderError` for an exception raised by the `anthropic` SDK (or its HTTP layer).

    * `APIStatusError` -> `classify_status(.status_code, headers, .body)`. An `event: error`
      inside a stream arrives as an `APIStatusError` whose status is the stream's 200; the
      body's `error.type` (`overloaded_error`, `rate_limit_error`, ...) then gives the status.
    * `APITimeoutError`, `APIConnectionError` -> `ProviderTimeout`; so do raw HTTP transport
      errors, which the SDK does not wrap while a stream is being read.
    * Anything else -> `ServerError`. A `ProviderError` is returned unchanged.
    """
    import anthropic

    if isinstance(exc, ProviderError):
        return exc
    secrets = tuple(secrets)
    if isinstance(exc, anthropic.APIStatusError):
        headers = _headers_of(exc)
        request_id = getattr(exc, "request_id", None) or request_id_from_headers(headers)
        return classify_status(
            exc.status_code, headers, exc.body, provider=provider, request_id=request_id,
            secrets=secrets,
        )
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderTimeout(f"{provider}: request timed out", provider=provider)
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderTimeout(f"{provider}: connection failed", provider=provider)
    if isinstance(exc, anthropic.APIResponseValidationError):
        return ServerError(
            f"{provider}: response did not match the API's schema",
            provider=provider,
            status=exc.status_code,
        )
    if isinstance(exc, anthropic.APIError):
        body = exc.body if exc.body is not None else exc.message
        return classify_status(None, {}, body, provider=provider, secrets=secrets)
    transport = _from_transport(exc, provider)
    if transport is not None:
        return transport
    return _unexpected(exc, provider, secrets)


def request_id_from_headers(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id: `x-request-id` (OpenAI, Groq), `request-id` (Anthropic), ..."""
    h = _lower(headers)
    for name in ("x-request-id", "request-id", "x-goog-request-id", "cf-ray"):
        value = h.get(name)
        if value:
            return value
    return None

