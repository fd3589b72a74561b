"""When a provider's day ends: the reset of its daily quotas (requests and tokens per day).

Providers count a day in one of two ways, and `day_reset` names which:

* a fixed window that resets at local midnight in a time zone (`"UTC"`, `"America/Los_Angeles"`):
  Gemini documents that its per-day quotas "reset at midnight Pacific time";
* `"rolling"`: a bucket that refills continuously at the daily limit per 24 h. Groq's
  `x-ratelimit-reset-requests` (always about its requests per day) counts down in minutes after
  a few calls ("2m59.56s" after 30 of 14,400 in its documentation), so its day refills as it
  goes rather than all at once at midnight.

Pure: epoch milliseconds in, epoch milliseconds out.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_MS = 86_400_000
ROLLING = "rolling"
# Day buckets count 1/86,400,000 of a token per unit, exact in a Lua double (2^53) up to
# 1e8 a day (8.64e15 units).
MAX_DAY_LIMIT = 100_000_000


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check_day_reset(value: str) -> str:
    """`value` when it is "rolling" or a time zone this system knows; else ValueError."""
    if value == ROLLING or value == "UTC":
        return value
    try:
        _zone(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"must be 'rolling' or a time zone such as 'UTC' or 'America/Los_Angeles' "
            f"(is the tz database installed? the `tzdata` package provides it): {exc}"
        ) from None
    return value


def day_bounds_ms(day_reset: str, now_ms: int) -> tuple[int, int]:
    """The fixed window holding `now_ms`: (its start, its end), both local midnights in the
    zone `day_reset` (end exclusive). Not for "rolling", which has no window."""
    if day_reset == "UTC":
        start = now_ms - now_ms % DAY_MS
        return start, start + DAY_MS
    zone = _zone(day_reset)
    local = datetime.fromtimestamp(now_ms / 1000, UTC).astimezone(zone)
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    following = midnight.date() + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    return int(midnight.timestamp()) * 1000, int(end.timestamp()) * 1000


def next_reset_ms(day_reset: str, now_ms: int) -> int | None:
    """The first reset of the day after `now_ms` (epoch ms); None for a rolling day."""
    if day_reset == ROLLING:
        return None
    return day_bounds_ms(day_reset, now_ms)[1]
