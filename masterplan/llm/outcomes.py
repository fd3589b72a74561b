"""The ledger's vocabulary: what one `llm_calls` row says became of an attempt.

Every writer and reader of `llm_calls.outcome` (the router, the pipeline, the queries, the
metrics) uses these members. The column stays a string: a `StrEnum` member is a `str` that
compares, stores and prints as its value, so stored rows and the API's and metrics' output are
the words they always were.

What a failed call's outcome means for the next call (is it worth retrying, after how long) is
not decided here: the `masterplan.errors.ProviderError` class that produced it says so.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class CallOutcome(StrEnum):
    """One ledger row's outcome. (Not `Outcome`: `masterplan.pipeline.Outcome` is a stage's.)"""

    OK = "ok"
    # A call that failed: each is one `ProviderError` class's `outcome`.
    ERROR = "error"
    RATE_LIMITED = "rate_limited"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    AUTH_ERROR = "auth_error"
    BAD_REQUEST = "bad_request"
    QUOTA_EXHAUSTED = "quota_exhausted"
    INVALID_OUTPUT = "invalid_output"
    # A 400 refusing the structured-output mode: retried at once in a weaker one, not a failure.
    MODE_UNSUPPORTED = "mode_unsupported"
    # A provider passed over without a call.
    SKIPPED_COOLDOWN = "skipped_cooldown"  # it was cooling down (shared in Redis)
    SKIPPED_RATELIMIT = "skipped_ratelimit"  # its token bucket said wait
    NEVER_FITS = "never_fits"  # the call exceeds its bucket's capacity
    # Rows that are not one provider's call.
    DEFERRED = "deferred"  # the whole step was put off: every provider must wait
    LOST = "lost"  # the worker died with a call in flight; what it cost is unknown

    @property
    def is_skip(self) -> bool:
        """A provider passed over without a call."""
        return self in SKIPS


# The outcomes of rows that record a provider passed over, not a call.
SKIPS: Final = frozenset(
    {CallOutcome.SKIPPED_COOLDOWN, CallOutcome.SKIPPED_RATELIMIT, CallOutcome.NEVER_FITS}
)
