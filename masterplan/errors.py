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

Each `ProviderError` class also says what its failure means for the next call, so the router
and the pipeline ask the error instead of keeping lists of their own:

    class            outcome          transient  default wait  circuit  benches
    RateLimited      rate_limited     yes        1 s           -        -
    Overloaded       overloaded       yes        - (*)         yes      -
    ServerError      server_error     yes        -             yes      -
    ProviderTimeout  timeout          yes        -             yes      -
    AuthError        auth_error       -          -             -        yes
    QuotaExhausted   quota_exhausted  -          -             -        yes (until its retry-after)
    BadRequest       bad_request      -          -             -        -
    InvalidOutput    invalid_output   -          -             -        -

(*) only its own Retry-After: a dead endpoint answers 503 to everything, and a fixed rest
would ask it again forever; without one, the failure only counts towards the circuit.
"circuit": counts towards the provider's circuit breaker (masterplan/llm/cooldowns.py).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from masterplan.llm.outcomes import CallOutcome


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


class BudgetExceeded(MasterplanError):
    """The next call's worst case would take the job past its cost ceiling, even once its other
    calls in flight have settled (masterplan/budget.py)."""


class AllProvidersFailed(MasterplanError):
    """Every provider in the chain failed for this call; `reasons` maps provider to why.
    `transient`: one of the failures was (5xx, timeout), so the same call may succeed later."""

    def __init__(self, reasons: dict[str, str], attempts: list[Any] | None = None, *,
                 transient: bool = False) -> None:
        detail = "; ".join(f"{name}: {why}" for name, why in reasons.items()) or "no provider"
        super().__init__(f"all providers failed ({detail})")
        self.reasons = reasons
        self.attempts = attempts or []
        self.transient = transient


class StreamInterrupted(MasterplanError):
    """A stream broke after text was already yielded; `partial_text` holds what arrived."""

    def __init__(self, provider: str, partial_text: str, cause: BaseException) -> None:
        super().__init__(f"stream from {provider} failed after {len(partial_text)} chars: {cause}")
        self.provider = provider
        self.partial_text = partial_text


class ProviderError(MasterplanError):
    """One provider call failed. Subclasses say how, and what that means for the next call."""

    # The ledger's word for this failure.
    outcome: ClassVar[CallOutcome] = CallOutcome.ERROR
    # The provider is struggling, not refusing: the same request may succeed later.
    transient: ClassVar[bool] = False
    # The rest the provider needs before it is asked again, when it named none; None: no rest
    # is worth waiting for (the request itself, or the account, is the trouble).
    default_wait_s: ClassVar[float | None] = None
    # The key or the account is refused: the provider is benched, not retried.
    benches: ClassVar[bool] = False
    # The provider failed to answer (5xx, silence, a broken stream): counts towards its circuit
    # breaker. A rate limit is an answer, and a refused request says nothing of the endpoint.
    trips_circuit: ClassVar[bool] = False

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

    @property
    def wait_ms(self) -> int | None:
        """How long before this provider may be asked again, when that is worth waiting for:
        its own retry-after, else the class's default wait; None when no wait is."""
        if self.default_wait_s is None:
            return None
        return self.retry_after_ms or math.ceil(self.default_wait_s * 1000)

    @property
    def bench_ms(self) -> int | None:
        """How long a benched provider sits out; None: the configured `auth_disable_s`."""
        return None


class RateLimited(ProviderError):
    """The provider answered 429."""

    outcome = CallOutcome.RATE_LIMITED
    transient = True
    default_wait_s = 1.0


class Overloaded(ProviderError):
    """The provider is overloaded (529, 503)."""

    outcome = CallOutcome.OVERLOADED
    transient = True
    trips_circuit = True

    @property
    def wait_ms(self) -> int | None:
        """Its own Retry-After only; without one no rest is assumed (see the table above)."""
        return self.retry_after_ms


class ServerError(ProviderError):
    """The provider failed with a 5xx."""

    outcome = CallOutcome.SERVER_ERROR
    transient = True
    trips_circuit = True


class ProviderTimeout(ProviderError):
    """The call timed out or the connection failed."""

    outcome = CallOutcome.TIMEOUT
    transient = True
    trips_circuit = True


class AuthError(ProviderError):
    """The provider refused the key (401, 403)."""

    outcome = CallOutcome.AUTH_ERROR
    benches = True


class BadRequest(ProviderError):
    """The provider refused the request itself (400, 413: e.g. context too long)."""

    outcome = CallOutcome.BAD_REQUEST


class QuotaExhausted(ProviderError):
    """Billing or daily quota exhausted."""

    outcome = CallOutcome.QUOTA_EXHAUSTED
    benches = True

    @property
    def bench_ms(self) -> int | None:
        """A quota that names its reset (a retry-after) sits out until then."""
        return self.retry_after_ms


class InvalidOutput(ProviderError):
    """The reply is not valid JSON for the requested schema."""

    outcome = CallOutcome.INVALID_OUTPUT
