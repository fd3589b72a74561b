"""The per-provider rate limiter: token buckets in Redis, checked and debited together.

Each provider has a tokens-per-minute (TPM) bucket and a requests-per-minute (RPM) bucket.
Both refill continuously (limit per 60,000 ms) up to a burst capacity. A provider that also caps
its day (TPD, RPD) has a day bucket for each cap, counted as the provider counts its day (see
`masterplan.ratelimit.day`): a fixed window that is full again at midnight in its zone, or a
rolling day refilled continuously. A call is admitted only when every bucket holds enough; then
all are debited in the same atomic script (`bucket.lua`), one Redis round trip per operation,
so a configured daily cap is never overrun, however many workers share it. The script reads
the clock from Redis `TIME`, so workers with skewed clocks still agree. Providers missing from
the limits mapping are unlimited and never touch Redis.

Lifecycle of a call::

    decision = limiter.reserve("groq", reservation_tokens(prompt_chars, max_tokens))
    ... call the provider ...
    limiter.settle(decision.reservation, usage.total)      # as the provider counts
    limiter.lower("groq", remaining_tokens=..., remaining_requests=...)  # if it said
    limiter.drain("groq")                                  # after a per-minute 429

Never fits: a reservation larger than a bucket's capacity can never be granted, so
`reserve` says so at once (`never_fits=True`) and the router moves on to the next provider.
We deliberately do not shrink `max_tokens` to make it fit: a truncated structured answer is
invalid JSON, so shrinking would trade a clear skip for an invalid-output failure later.

Burst: capacity defaults to one minute's limit, which lets an idle provider take a full
minute's worth at once and gives the best throughput. A provider that enforces a strict
sliding window (no more than the limit in *any* 60 s) can reject such a burst followed by
the refill; for those, configure `burst_tokens` / `burst_requests` below one minute's limit,
at the cost of less throughput on bursts.

Settlement: a provider that counts what a call really used (`counts="actual"`) gets the
unused part of the reservation back and the excess as debt (`settle` = `reconcile`); one that
charges `max_tokens` at admission and never gives it back (`counts="reserved"`, OpenAI) gets no
refund, only the debt of a call that used more than was reserved. A call the provider never
counted (refused, failed, never sent) is handed back whole with `reconcile(reservation, 0)`.

Keys: `<prefix>:rl:{<provider>}:tokens` and `<prefix>:rl:{<provider>}:requests`, and with
daily caps `...:tokens-day` and `...:requests-day`, each a string "<level>:<ms>" (the level in
units, see `model.py`). The hash tag keeps them in one Redis Cluster slot (the script touches
them atomically). Each key expires a little after the time it would take to refill fully (a
fixed day window: after its end), so idle providers leave nothing behind.

Redis unreachable: every operation raises `LimiterUnavailable`; calls are never waved
through unmetered. `redis_unavailable` says which redis-py errors count as "Redis cannot serve
us now" (down, restarting, loading, read-only after a failover, out of memory, refusing writes);
`unavailable_as_limiter_error` turns them into `LimiterUnavailable` for this module and for the
provider cooldowns. Any other Redis error is a bug in our own commands and is left to surface.

`now_ms` on every method is for tests only: it replaces Redis `TIME` as the script's clock.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from redis.exceptions import (
    ClusterError,
    InvalidResponse,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from masterplan.errors import LimiterUnavailable
from masterplan.ratelimit.day import MAX_DAY_LIMIT, ROLLING, check_day_reset, day_bounds_ms
from masterplan.ratelimit.model import DAY_UNITS_PER_TOKEN, UNITS_PER_TOKEN

# Lua numbers are doubles (exact to 2^53) and levels are stored in 1/60000 units, so
# capacities and rates stay at or below this to keep every value exact with room for debt
# (per-day limits at or below MAX_DAY_LIMIT, as their units are smaller).
MAX_LIMIT = 1_000_000_000

# How a provider settles a call: by what it really used, or by what it reserved at admission.
LimitCounts = Literal["actual", "reserved"]

_SCRIPT = resources.files("masterplan.ratelimit").joinpath("bucket.lua").read_text("utf-8")
_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode("utf-8")).hexdigest().encode()
_RESERVE, _ADJUST, _LOWER, _DRAIN, _PEEK = b"reserve", b"adjust", b"lower", b"drain", b"peek"

# ConnectionError also covers BusyLoadingError (LOADING), MaxConnectionsError and a refused AUTH;
# ReadOnlyError is a replica after a failover; ClusterError covers CLUSTERDOWN and MASTERDOWN.
_OUTAGES: tuple[type[RedisError], ...] = (
    RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError, ClusterError,
    TryAgainError, InvalidResponse,
)
# Outage replies redis-py does not map to a class (MISCONF: a failed snapshot stops writes), and
# the mapped ones again in case they reach us as a bare ResponseError (e.g. from a Lua script).
_OUTAGE_REPLIES = ("MISCONF", "LOADING", "READONLY", "OOM", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN")


def redis_unavailable(exc: BaseException) -> bool:
    """True when a redis-py error means Redis cannot serve us now, as opposed to a bug of ours."""
    if isinstance(exc, _OUTAGES):
        return True
    return isinstance(exc, ResponseError) and str(exc).lstrip().startswith(_OUTAGE_REPLIES)


@contextmanager
def unavailable_as_limiter_error(what: str) -> Iterator[None]:
    """Raise `LimiterUnavailable` naming `what` for every Redis outage inside the block."""
    try:
        yield
    except RedisError as exc:
        if not redis_unavailable(exc):
            raise
        raise LimiterUnavailable(
            f"Redis is unreachable for {what} ({type(exc).__name__}: {exc})"
        ) from exc


@dataclass(frozen=True)
class BucketLimits:
    """One provider's limits. Burst capacities default to one minute's limit.

    `tpd`, `rpd`: tokens and requests per day (None: no daily cap); `day_reset` says when the
    day ends ("rolling", or the time zone of its midnight, see `masterplan.ratelimit.day`).
    `counts`: how the provider settles a call, "actual" or "reserved" (see `settle`).
    """

    tpm: int
    rpm: int
    burst_tokens: int | None = None
    burst_requests: int | None = None
    tpd: int | None = None
    rpd: int | None = None
    day_reset: str = "UTC"
    counts: LimitCounts = "actual"

    def __post_init__(self) -> None:
        for name in ("tpm", "rpm", "burst_tokens", "burst_requests", "tpd", "rpd"):
            value = getattr(self, name)
            if value is None and name not in ("tpm", "rpm"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            most = MAX_DAY_LIMIT if name in ("tpd", "rpd") else MAX_LIMIT
            if value > most:
                raise ValueError(f"{name} must be at most {most}, got {value}")
        try:
            check_day_reset(self.day_reset)
        except ValueError as exc:
            raise ValueError(f"day_reset {self.day_reset!r} {exc}") from None
        if self.counts not in ("actual", "reserved"):
            raise ValueError(f"counts must be 'actual' or 'reserved', got {self.counts!r}")

    @property
    def daily(self) -> bool:
        """The provider caps its day (tokens, requests or both)."""
        return self.tpd is not None or self.rpd is not None

    @property
    def token_capacity(self) -> int:
        """Most tokens the bucket can hold (and so the largest reservation that can fit)."""
        return self.tpm if self.burst_tokens is None else self.burst_tokens

    @property
    def request_capacity(self) -> int:
        """Most requests the bucket can hold."""
        return self.rpm if self.burst_requests is None else self.burst_requests


@dataclass(frozen=True)
class Reservation:
    """What was debited for one call; hand it back to `reconcile` with the real usage."""

    provider: str
    tokens: int
    requests: int


@dataclass(frozen=True)
class Decision:
    """The answer to `reserve`.

    granted: debited, go ahead (`reservation` is set).
    wait_ms: when not granted, the exact wait until both buckets would fit this call.
    never_fits: the call exceeds a bucket's capacity and never will fit (wait_ms is 0);
        try another provider.
    """

    granted: bool
    wait_ms: int
    never_fits: bool
    reservation: Reservation | None


@dataclass(frozen=True)
class BucketStatus:
    """Current levels of one provider; `wait_ms` is the wait for a one-token, one-request call
    (the day buckets included).

    The day fields are None for a provider without that daily cap: `tokens_today` and
    `requests_today` are what is left of the day, `day_resets_at_ms` (epoch ms, Redis's clock)
    when the day buckets are full again: a fixed window's end, or a rolling day's full refill.
    """

    provider: str
    tokens: int
    token_capacity: int
    requests: int
    request_capacity: int
    wait_ms: int
    tokens_today: int | None = None
    token_day_capacity: int | None = None
    requests_today: int | None = None
    request_day_capacity: int | None = None
    day_resets_at_ms: int | None = None


class TokenBucketLimiter:
    """Per-provider TPM + RPM buckets in Redis (works with `redis.Redis` and `FakeRedis`)."""

    def __init__(
        self, redis_client: Any, limits: Mapping[str, BucketLimits], *, prefix: str = "mp"
    ) -> None:
        self._redis = redis_client
        self._limits = dict(limits)
        self._prefix = prefix
        # Keys and the fixed limit arguments per provider, encoded once: reserve is hot and
        # the client passes bytes through without converting them on every call.
        self._static: dict[str, tuple[bytes, ...]] = {}
        # With daily caps: the two day keys, and the caps (b"" for none).
        self._day: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}
        # The fixed day window each provider's caller clock was last in: (start, end) ms.
        self._window: dict[str, tuple[int, int]] = {}
        for provider, lim in self._limits.items():
            tokens_key, requests_key = self.keys_for(provider)
            self._static[provider] = (
                tokens_key.encode(),
                requests_key.encode(),
                b"%d" % lim.tpm,
                b"%d" % lim.token_capacity,
                b"%d" % lim.rpm,
                b"%d" % lim.request_capacity,
            )
            if lim.daily:
                day_tokens, day_requests = self.day_keys_for(provider)
                self._day[provider] = (
                    day_tokens.encode(), day_requests.encode(),
                    b"" if lim.tpd is None else b"%d" % lim.tpd,
                    b"" if lim.rpd is None else b"%d" % lim.rpd,
                )

    # -- public surface ------------------------------------------------------------------

    def limits_for(self, provider: str) -> BucketLimits | None:
        """The provider's limits, or None when it is unlimited."""
        return self._limits.get(provider)

    def keys_for(self, provider: str) -> tuple[str, str]:
        """The provider's token and request bucket keys (one hash tag, one cluster slot)."""
        base = f"{self._prefix}:rl:{{{provider}}}"
        return f"{base}:tokens", f"{base}:requests"

    def day_keys_for(self, provider: str) -> tuple[str, str]:
        """The provider's day token and day request bucket keys (the same hash tag)."""
        base = f"{self._prefix}:rl:{{{provider}}}"
        return f"{base}:tokens-day", f"{base}:requests-day"

    def reserve(
        self, provider: str, tokens: int, *, requests: int = 1, keep: float = 0.0,
        now_ms: int | None = None,
    ) -> Decision:
        """Debit `tokens` and `requests` from both buckets, or say how long to wait.

        `keep` is the share of each bucket's capacity that must still be there after the debit
        (the headroom a key's further jobs leave for other keys' first ones); a call too large
        to leave it all leaves what it can, so that it still fits a full bucket.
        One Redis round trip. Unlimited providers are granted without touching Redis.
        """
        _check_count("tokens", tokens)
        _check_count("requests", requests)
        lim = self._limits.get(provider)
        if lim is None:
            return Decision(True, 0, False, Reservation(provider, tokens, requests))
        if (tokens > lim.token_capacity or requests > lim.request_capacity
                or (lim.tpd is not None and tokens > lim.tpd)
                or (lim.rpd is not None and requests > lim.rpd)):
            # Known from the limits alone: no need to ask Redis.
            return Decision(False, 0, True, None)
        extra: tuple[Any, ...] = ()
        if keep > 0:
            extra = (min(int(lim.token_capacity * keep), lim.token_capacity - tokens),
                     min(int(lim.request_capacity * keep), lim.request_capacity - requests))
        wait_ms = self._run(provider, _RESERVE, now_ms, tokens, requests, *extra)
        if wait_ms == 0:
            return Decision(True, 0, False, Reservation(provider, tokens, requests))
        if wait_ms < 0:
            return Decision(False, 0, True, None)
        return Decision(False, int(wait_ms), False, None)

    def reconcile(
        self, reservation: Reservation, actual_tokens: int, *, now_ms: int | None = None
    ) -> None:
        """Settle a reservation with the tokens the provider actually counted.

        Fewer than reserved: the difference is refunded (never past capacity).
        More: the difference is debt; the level may go below zero and later calls wait.
        """
        _check_count("actual_tokens", actual_tokens)
        if reservation.provider not in self._limits:
            return
        delta = actual_tokens - reservation.tokens
        if delta == 0:
            return
        self._run(reservation.provider, _ADJUST, now_ms, delta, b"")

    def settle(
        self, reservation: Reservation, used_tokens: int, *, now_ms: int | None = None
    ) -> None:
        """Settle a call the provider answered, the way that provider charges it.

        counts="actual": as `reconcile` (a refund of what was not used, or debt).
        counts="reserved": the provider charged the reservation (`max_tokens` included) at
        admission and keeps it, so nothing is refunded; a call that used more is still debt.
        """
        _check_count("used_tokens", used_tokens)
        lim = self._limits.get(reservation.provider)
        if lim is None:
            return
        if lim.counts == "reserved":
            used_tokens = max(used_tokens, reservation.tokens)
        self.reconcile(reservation, used_tokens, now_ms=now_ms)

    def lower(
        self,
        provider: str,
        *,
        remaining_tokens: int | None,
        remaining_requests: int | None,
        now_ms: int | None = None,
    ) -> None:
        """Take the provider's own remaining counts: each level becomes min(current, remaining).

        Never raises a level: the provider cannot see our reservations still in flight.
        """
        if provider not in self._limits or (
            remaining_tokens is None and remaining_requests is None
        ):
            return
        tokens_arg = b"" if remaining_tokens is None else max(0, int(remaining_tokens))
        requests_arg = b"" if remaining_requests is None else max(0, int(remaining_requests))
        self._run(provider, _LOWER, now_ms, tokens_arg, requests_arg)

    def drain(self, provider: str, *, now_ms: int | None = None) -> None:
        """Empty both buckets (after a 429); existing debt is kept."""
        if provider not in self._limits:
            return
        self._run(provider, _DRAIN, now_ms, b"", b"")

    def status(self, provider: str, *, now_ms: int | None = None) -> BucketStatus:
        """Current whole tokens and requests, without debiting.

        Raises ValueError for an unlimited provider (it has no buckets; see `limits_for`).
        """
        lim = self._limits.get(provider)
        if lim is None:
            raise ValueError(f"provider {provider!r} has no rate limits configured")
        wait_ms, token_level, request_level, *day = self._run(provider, _PEEK, now_ms, b"", b"")
        day_tokens, day_requests, resets_at = day or (None, None, None)
        return BucketStatus(
            provider=provider,
            tokens=int(token_level) // UNITS_PER_TOKEN,
            token_capacity=lim.token_capacity,
            requests=int(request_level) // UNITS_PER_TOKEN,
            request_capacity=lim.request_capacity,
            wait_ms=int(wait_ms),
            tokens_today=_whole(day_tokens),
            token_day_capacity=lim.tpd,
            requests_today=_whole(day_requests),
            request_day_capacity=lim.rpd,
            day_resets_at_ms=None if resets_at is None else int(resets_at),
        )

    # -- script call ---------------------------------------------------------------------

    def _run(self, provider: str, op: bytes, now_ms: int | None, a: Any, b: Any, *more: Any) -> Any:
        """Run one op of the script: one round trip, plus a reload if Redis lost the script.

        Returns the script's reply as is (see the top of `bucket.lua`).
        """
        if now_ms is not None:
            _check_count("now_ms", now_ms)
        tokens_key, requests_key, tpm, tcap, rpm, rcap = self._static[provider]
        clock = b"" if now_ms is None else now_ms
        day = self._day.get(provider)
        if day is None:
            args: tuple[Any, ...] = (_SCRIPT_SHA, 2, tokens_key, requests_key, op, clock, tpm,
                                     tcap, rpm, rcap, a, b, *more)
        else:
            day_tokens_key, day_requests_key, tpd, rpd = day
            keep = (*more, b"", b"")[:2]
            args = (_SCRIPT_SHA, 4, tokens_key, requests_key, day_tokens_key, day_requests_key,
                    op, clock, tpm, tcap, rpm, rcap, a, b, *keep, tpd, rpd,
                    self._day_window(provider, now_ms))
        with unavailable_as_limiter_error(f"the rate limiter of {provider!r}"):
            try:
                result = self._redis.execute_command("EVALSHA", *args)
            except NoScriptError:
                # Redis restarted or SCRIPT FLUSH ran: load once more and retry once.
                self._redis.script_load(_SCRIPT)
                result = self._redis.execute_command("EVALSHA", *args)
        return result


    def _day_window(self, provider: str, now_ms: int | None) -> bytes:
        """ARGV[13]: "rolling", or the next reset of the provider's fixed day window as this
        process's clock (or the test clock) sees it; the script corrects for Redis's clock."""
        day_reset = self._limits[provider].day_reset
        if day_reset == ROLLING:
            return b"rolling"
        now = int(time.time() * 1000) if now_ms is None else now_ms
        window = self._window.get(provider)
        if window is None or not window[0] <= now < window[1]:
            window = self._window[provider] = day_bounds_ms(day_reset, now)
        return b"%d" % window[1]


def _whole(level: Any) -> int | None:
    """Whole tokens (or requests) of a day bucket's level in units; None when not capped."""
    return None if level is None else int(level) // DAY_UNITS_PER_TOKEN


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
