"""One error hierarchy for the whole core.

    MasterplanError
     ├── ConfigError                 a setting is missing or malformed (names the variable)
     ├── SchemaBehindError           the database is not at the latest migration
     ├── LimiterUnavailable          Redis cannot be reached by the rate limiter
     ├── RetryLater                  every provider must wait; retry after `wait_ms`
     ├── AllProvidersFailed          every provider failed for good on this call
     ├── StreamInterrupted           a stream failed after its first chunk (carries partial text)
 ├── JobClosed                   the job was cancelled or ended: no further call is made for it
     └── ProviderError               one provider's call failed, classified at the adapter boundary
          ├── RateLimited            429 (carries retry_after_ms when the provider said)
          ├── Overloaded             529 / 503
          ├── ServerError            other 5xx
          ├── ProviderTimeout        timeout or connection failure
          ├── AuthError              401 / 403: the key is wrong or revoked
          ├── BadRequest             400 / 413, e.g. context too long
          ├── QuotaExhausted         billing or daily quota used up
          └── InvalidOutput          the reply is not valid JSON for the schema
"""

from __future__ import annotations

from typing import Any


class MasterplanError(Exception):
    """Base of every error raised by the core."""


class ConfigError(MasterplanError):
    """A setting is missing or malformed; the message names the variable."""


class SchemaBehindError(MasterplanError):
    """The database schema is older than the code; run `alembic upgrade head`."""


class LimiterUnavailable(MasterplanError):
    """Redis (the rate limiter's buckets, the shared cooldowns) cannot be reached: calls wait
    rather than go through unmetered."""


class RetryLater(MasterplanError):
    """Every provider in the chain must wait; the caller should retry after `wait_ms`."""

    def __init__(self, wait_ms: int, reason: str, attempts: list[Any] | None = None) -> None:
        super().__init__(f"retry in {wait_ms} ms: {reason}")
        self.wait_ms = wait_ms
        self.reason = reason
        self.attempts = attempts or []


class JobClosed(MasterplanError):
    """The job was cancelled or has ended: no further LLM call is made for it."""


class AllProvidersFailed(MasterplanError):
    """Every provider in the chain failed for good; `reasons` maps provider to why."""

    def __init__(self, reasons: dict[str, str], attempts: list[Any] | None = None) -> None:
        detail = "; ".join(f"{name}: {why}" for name, why in reasons.items()) or "no provider"
        super().__init__(f"all providers failed ({detail})")
        self.reasons = reasons
        self.attempts = attempts or []


class StreamInterrupted(MasterplanError):
    """A stream broke after text was already yielded; `partial_text` holds what arrived."""

    def __init__(self, provider: str, partial_text: str, cause: BaseException) -> None:
        super().__init__(f"stream from {provider} failed after {len(partial_text)} chars: {cause}")
        self.provider = provider
        self.partial_text = partial_text


class ProviderError(MasterplanError):
    """One provider call failed. Subclasses say how; `outcome` is the ledger's word for it."""

    outcome = "error"

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after_ms: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after_ms = retry_after_ms
        self.request_id = request_id


class RateLimited(ProviderError):
    """The provider answered 429."""

    outcome = "rate_limited"


class Overloaded(ProviderError):
    """The provider is overloaded (529, 503)."""

    outcome = "overloaded"


class ServerError(ProviderError):
    """The provider failed with a 5xx."""

    outcome = "server_error"


class ProviderTimeout(ProviderError):
    """The call timed out or the connection failed."""

    outcome = "timeout"


class AuthError(ProviderError):
    """The provider refused the key (401, 403)."""

    outcome = "auth_error"


class BadRequest(ProviderError):
    """The provider refused the request itself (400, 413: e.g. context too long)."""

    outcome = "bad_request"


class QuotaExhausted(ProviderError):
    """Billing or daily quota exhausted."""

    outcome = "quota_exhausted"


class InvalidOutput(ProviderError):
    """The reply is not valid JSON for the requested schema."""

    outcome = "invalid_output"
