"""Per-provider rate limiting: TPM and RPM (and TPD, RPD) buckets in Redis, one round trip per call."""

from masterplan.ratelimit.estimate import estimate_prompt_tokens, reservation_tokens
from masterplan.ratelimit.limiter import (
    BucketLimits,
    BucketStatus,
    Decision,
    LimitCounts,
    Reservation,
    TokenBucketLimiter,
)

__all__ = [
    "BucketLimits",
    "BucketStatus",
    "Decision",
    "LimitCounts",
    "Reservation",
    "TokenBucketLimiter",
    "estimate_prompt_tokens",
    "reservation_tokens",
]
