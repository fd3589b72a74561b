"""Provider failures classified once, at the adapter boundary.

Everything an adapter knows about a failed call (HTTP status, response headers, error body, the
SDK exception) goes through this module and comes out as exactly one
`masterplan.errors.ProviderError` subclass. Nothing above the adapters looks at status codes,
headers or SDK exception types.

Public functions (the wait and remaining capacity themselves are read by `masterplan.llm.wire`):

* `classify_status(status, headers, body, provider=..., request_id=...)`: status + body ->
  error class.
* `from_sdk_error(sdk, exc, provider)`: an exception of the `openai` or `anthropic` SDK (the
  module is `sdk`) -> error, via `classify_status`; `from_openai_error(exc, provider)` /
  `from_anthropic_error(exc, provider)` name the SDK.

Error messages are built here from the status and the provider's own error text, truncated,
with anything that looks like an API key redacted. SDK messages are never passed through as-is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
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
from masterplan.llm.wire import (
    MAX_DETAIL,
    body_codes,
    body_messages,
    daily_quota_wait_ms,
    decode_body,
    lower_headers,
    retry_after_ms,
    retry_info_ms,
    walk_body,
)

__all__ = [
    "classify_status",
    "from_anthropic_error",
    "from_openai_error",
    "from_sdk_error",
    "redact",
    "request_id_from_headers",
]

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
    texts = body_messages(body)
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
    return text[:MAX_DETAIL] + ("…" if len(text) > MAX_DETAIL else "")


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
    for node in walk_body(body):
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
    return [_URL.sub(" ", text) for text in body_messages(body)]


def _quota_429(body: object) -> str | None:
    """A 429 that will not clear in seconds: "billing" (billing, spend limit), "daily" (a daily
    quota: it clears when the provider's day resets), or None (an ordinary rate limit).

    Structured signals decide first: a quota code (`insufficient_quota`, Anthropic's spend-limit
    codes, `billing_error`) -> billing; Gemini's QuotaFailure `quotaId`s -> daily only if one is
    per day ("GenerateRequestsPerDayPerProjectPerModel-FreeTier"). Then the text: "per day" /
    "daily" / RPD / TPD (Groq's "requests per day (RPD)", OpenAI's "on requests per day") ->
    daily. Billing words in the text count only when no rate-limit code or RetryInfo marks the
    429 as an ordinary one: Groq's and Gemini's per-minute 429s carry "upgrade ... billing"
    boilerplate, and a wrongly transient verdict costs one more 429 whereas a wrongly permanent
    one benches the provider for the day.
    """
    codes = body_codes(body)
    if codes & _QUOTA_CODES:
        return "billing"
    quota_ids = _quota_ids(body)
    if quota_ids:
        return "daily" if any(_DAILY_TEXT.search(q) for q in quota_ids) else None
    texts = _texts(body)
    if any(_DAILY_TEXT.search(text) for text in texts):
        return "daily"
    if codes & _RATE_CODES or retry_info_ms(body) is not None:
        return None
    return "billing" if any(_BILLING_TEXT.search(text) for text in texts) else None


def _is_billing(body: object) -> bool:
    if body_codes(body) & _QUOTA_CODES:
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
    for node in walk_body(body):
        code = node.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            return code
        if isinstance(code, str) and code.isdigit() and 400 <= int(code) <= 599:
            return int(code)
    codes = body_codes(body)
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
      A daily quota's `retry_after_ms` is always set, to its reset (`wire.daily_quota_wait_ms`:
      what the provider said, else the day's end), so the router cools the provider down until
      then on every worker instead of disabling it.
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
    body = decode_body(body)
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
        quota = _quota_429(body)
        if quota == "daily":
            return QuotaExhausted(message, **(kw | {"retry_after_ms": daily_quota_wait_ms(
                headers, body)}))
        if quota is not None:
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
    codes = body_codes(body)
    if "api_key_invalid" in codes or any(_BAD_KEY_TEXT.search(t) for t in body_messages(body)):
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
    text = redact(" ".join(str(exc).split())[:MAX_DETAIL], secrets)
    return ServerError(f"{provider}: unexpected {type(exc).__name__}: {text}", provider=provider)


def from_sdk_error(
    sdk: Any, exc: BaseException, provider: str, *, secrets: Iterable[str | None] = ()
) -> ProviderError:
    """Both SDKs (openai, anthropic) share one exception tree; `sdk` is the module.

    * `APIStatusError` (any HTTP 4xx/5xx) -> `classify_status(.status_code, headers, .body)`.
      An error inside a stream that began with 200 (openai's `{"error": ...}` chunk, anthropic's
      `event: error`) carries no useful status; the body's code/type then gives it.
    * `APITimeoutError`, `APIConnectionError` and raw HTTP transport errors (which anthropic
      does not wrap while a stream is read) -> `ProviderTimeout`.
    * Anything else -> `ServerError`. A `ProviderError` is returned unchanged.
    """
    if isinstance(exc, ProviderError):
        return exc
    secrets = tuple(secrets)
    if isinstance(exc, sdk.APIStatusError):
        headers = _headers_of(exc)
        request_id = getattr(exc, "request_id", None) or request_id_from_headers(headers)
        return classify_status(
            exc.status_code, headers, exc.body, provider=provider, request_id=request_id,
            secrets=secrets,
        )
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderTimeout(f"{provider}: request timed out", provider=provider)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderTimeout(f"{provider}: connection failed", provider=provider)
    if isinstance(exc, sdk.APIResponseValidationError):
        return ServerError(
            f"{provider}: response did not match the API's schema",
            provider=provider,
            status=exc.status_code,
        )
    if isinstance(exc, sdk.APIError):
        body = exc.body if exc.body is not None else exc.message
        return classify_status(None, {}, body, provider=provider, secrets=secrets)
    transport = _from_transport(exc, provider)
    if transport is not None:
        return transport
    return _unexpected(exc, provider, secrets)


def from_openai_error(
    exc: BaseException, provider: str, *, secrets: Iterable[str | None] = ()
) -> ProviderError:
    """The `ProviderError` for an exception raised by the `openai` SDK (or its HTTP layer)."""
    import openai

    return from_sdk_error(openai, exc, provider, secrets=secrets)


def from_anthropic_error(
    exc: BaseException, provider: str, *, secrets: Iterable[str | None] = ()
) -> ProviderError:
    """The `ProviderError` for an exception raised by the `anthropic` SDK (or its HTTP layer)."""
    import anthropic

    return from_sdk_error(anthropic, exc, provider, secrets=secrets)


def request_id_from_headers(headers: Mapping[str, str] | None) -> str | None:
    """The provider's request id: `x-request-id` (OpenAI, Groq), `request-id` (Anthropic), ..."""
    h = lower_headers(headers)
    for name in ("x-request-id", "request-id", "x-goog-request-id", "cf-ray"):
        value = h.get(name)
        if value:
            return value
    return None

