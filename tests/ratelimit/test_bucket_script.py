"""The bucket script and the limiter around it, on real Redis and on fakeredis.

Time is controlled through `now_ms` (the script's test-only clock override) so every
refill and wait below is an exact number.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from masterplan.errors import LimiterUnavailable
from masterplan.ratelimit import (
    BucketLimits,
    Decision,
    Reservation,
    TokenBucketLimiter,
    estimate_prompt_tokens,
    reservation_tokens,
)

T = 1_700_000_000_000  # an arbitrary epoch-ms start; all times below are relative to it
P = "groq"


def make(client: Any, prefix: str, **limits: Any) -> TokenBucketLimiter:
    return TokenBucketLimiter(client, {P: BucketLimits(**limits)}, prefix=prefix)


def levels(lim: TokenBucketLimiter, now_ms: int) -> tuple[int, int]:
    s = lim.status(P, now_ms=now_ms)
    return s.tokens, s.requests


def dead_client() -> redis.Redis:
    # Port 1 has no listener; no retries so the failure is immediate.
    return redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )


# -- refill ------------------------------------------------------------------------------


def test_fresh_bucket_is_full(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    s = lim.status(P, now_ms=T)
    assert (s.tokens, s.token_capacity, s.wait_ms) == (600, 600, 0)
    assert (s.requests, s.request_capacity) == (10, 10)


def test_refill_over_time(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=100)
    assert lim.reserve(P, 600, now_ms=T).granted
    assert levels(lim, T) == (0, 99)
    assert levels(lim, T + 30_000) == (300, 100)
    assert levels(lim, T + 60_000) == (600, 100)
    assert levels(lim, T + 600_000) == (600, 100)  # capped at capacity


def test_fractional_refill_is_carried(redis_client: Any, key_prefix: str) -> None:
    # 7 tokens per minute: one token takes 8571.43 ms, so fractions must survive between calls.
    lim = make(redis_client, key_prefix, tpm=7, rpm=100)
    assert lim.reserve(P, 7, now_ms=T).granted
    assert levels(lim, T + 8_571)[0] == 0
    assert levels(lim, T + 8_572)[0] == 1
    assert lim.reserve(P, 1, now_ms=T + 8_572).granted  # leaves 4/60000 of a token
    # The 4 units left over add to the next 8571 ms of refill: 4 + 8571 * 7 = 60001.
    assert levels(lim, T + 8_572 + 8_570)[0] == 0
    assert levels(lim, T + 8_572 + 8_571)[0] == 1


def test_redis_time_is_the_default_clock(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    assert lim.reserve(P, 600).granted
    d = lim.reserve(P, 1)
    assert not d.granted and 0 < d.wait_ms <= 100
    s = lim.status(P)
    assert s.tokens == 0 and s.requests == 9


def test_clock_going_back_refills_nothing(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    assert lim.reserve(P, 600, now_ms=T + 10_000).granted
    assert levels(lim, T) == (0, 9)
    assert levels(lim, T + 11_000) == (10, 9)


# -- both limits together, exact waits -----------------------------------------------------


def test_exact_wait(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=100)  # one token per 100 ms
    assert lim.reserve(P, 600, now_ms=T).granted
    assert lim.reserve(P, 5, now_ms=T) == Decision(False, 500, False, None)
    assert lim.reserve(P, 5, now_ms=T + 499).wait_ms == 1
    assert lim.reserve(P, 5, now_ms=T + 500).granted


def test_exact_wait_with_a_fractional_rate(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=7, rpm=100)
    lim.drain(P, now_ms=T)
    assert lim.reserve(P, 1, now_ms=T).wait_ms == 8_572  # ceil(60000 / 7)
    assert lim.reserve(P, 3, now_ms=T).wait_ms == 25_715  # ceil(180000 / 7)
    assert not lim.reserve(P, 3, now_ms=T + 25_714).granted
    assert lim.reserve(P, 3, now_ms=T + 25_715).granted


def test_headroom_is_left_for_first_jobs(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=100)  # one token per 100 ms
    assert lim.reserve(P, 400, keep=0.2, now_ms=T).granted  # 200 left, 120 must stay
    # 80 more would leave 120: granted; the next 10 must wait until 130 are there (1000 ms).
    assert lim.reserve(P, 80, keep=0.2, now_ms=T).granted
    assert lim.reserve(P, 10, keep=0.2, now_ms=T) == Decision(False, 1_000, False, None)
    # A first job's call may take the headroom itself.
    assert lim.reserve(P, 120, now_ms=T).granted
    # A call too large to leave all of it leaves what it can, and still fits a full bucket.
    assert lim.reserve(P, 550, keep=0.2, now_ms=T + 60_000).granted


def test_rpm_blocks_even_with_plenty_of_tokens(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000_000, rpm=2)
    assert lim.reserve(P, 1, now_ms=T).granted
    assert lim.reserve(P, 1, now_ms=T).granted
    assert lim.reserve(P, 1, now_ms=T) == Decision(False, 30_000, False, None)


def test_tpm_blocks_even_with_plenty_of_requests(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=100, rpm=1_000)
    assert lim.reserve(P, 100, now_ms=T).granted
    assert lim.reserve(P, 10, now_ms=T) == Decision(False, 6_000, False, None)


def test_wait_is_the_longer_of_the_two(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=120, rpm=2)
    assert lim.reserve(P, 100, requests=2, now_ms=T).granted
    # Tokens: 20 left, 30 more needed = 15000 ms. Requests: 0 left, one needs 30000 ms.
    assert lim.reserve(P, 50, now_ms=T).wait_ms == 30_000
    # Tokens the longer one: need 120 (100 missing) = 50000 ms.
    assert lim.reserve(P, 120, now_ms=T).wait_ms == 50_000


def test_debits_both_or_neither(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=1)
    assert lim.reserve(P, 10, now_ms=T).granted
    assert levels(lim, T) == (990, 0)
    assert not lim.reserve(P, 10, now_ms=T).granted  # tokens fit, the request does not
    assert levels(lim, T) == (990, 0)  # so the tokens were not taken either


def test_requests_per_reservation(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=10)
    d = lim.reserve(P, 0, requests=4, now_ms=T)
    assert d.reservation == Reservation(P, 0, 4)
    assert levels(lim, T) == (1_000, 6)


# -- never fits ----------------------------------------------------------------------------


def test_never_fits(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=100, rpm=2)
    assert lim.reserve(P, 101, now_ms=T) == Decision(False, 0, True, None)
    assert lim.reserve(P, 1, requests=3, now_ms=T) == Decision(False, 0, True, None)
    assert lim.reserve(P, 100, requests=2, now_ms=T).granted


def test_burst_sets_capacity(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=100, rpm=10, burst_tokens=50, burst_requests=2)
    assert levels(lim, T) == (50, 2)
    assert lim.reserve(P, 51, now_ms=T).never_fits
    assert lim.reserve(P, 50, now_ms=T).granted
    assert lim.reserve(P, 1, now_ms=T) == Decision(False, 600, False, None)
    # Refill runs at tpm (100/min) but stops at the burst capacity.
    assert levels(lim, T + 600_000) == (50, 2)


def test_script_itself_says_never_fits(redis_client: Any, key_prefix: str) -> None:
    # The limiter answers never-fits from its limits without a round trip; the script
    # must still refuse on its own (another process may run with other limits).
    source = resources.files("masterplan.ratelimit").joinpath("bucket.lua").read_text()
    script = redis_client.register_script(source)
    lim = make(redis_client, key_prefix, tpm=100, rpm=2)
    keys = list(lim.keys_for(P))
    assert script(keys=keys, args=["reserve", T, 100, 100, 2, 2, 101, 1]) == -1
    assert script(keys=keys, args=["reserve", T, 100, 100, 2, 2, 1, 3]) == -1
    assert redis_client.exists(*keys) == 0  # nothing debited, nothing written
    assert script(keys=keys, args=["peek", T, 100, 100, 2, 2, "", ""]) == [0, 6_000_000, 120_000]


def test_unknown_op_is_an_error(redis_client: Any, key_prefix: str) -> None:
    source = resources.files("masterplan.ratelimit").joinpath("bucket.lua").read_text()
    script = redis_client.register_script(source)
    with pytest.raises(redis.exceptions.ResponseError, match="unknown rate limiter op"):
        script(keys=[f"{key_prefix}:a", f"{key_prefix}:b"], args=["bogus", T, 1, 1, 1, 1, 0, 0])


# -- reconcile, lower, drain -----------------------------------------------------------------


def test_reconcile_refund(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=100)
    d = lim.reserve(P, 800, now_ms=T)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 300, now_ms=T)
    assert levels(lim, T)[0] == 700


def test_reconcile_refund_is_capped_at_capacity(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=100)
    d = lim.reserve(P, 100, now_ms=T)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 0, now_ms=T + 60_000)  # refilled by then
    assert levels(lim, T + 60_000)[0] == 1_000


def test_reconcile_debt_makes_later_calls_wait(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=100)
    d = lim.reserve(P, 1_000, now_ms=T)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 1_500, now_ms=T)
    assert levels(lim, T)[0] == -500
    # 501 tokens short at 1000/min: ceil(501 * 60) ms.
    assert lim.reserve(P, 1, now_ms=T).wait_ms == 30_060
    assert lim.status(P, now_ms=T).wait_ms == 30_060
    assert lim.reserve(P, 1, now_ms=T + 30_060).granted


def test_reconcile_exact_is_a_no_op(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=100)
    d = lim.reserve(P, 400, now_ms=T)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 400, now_ms=T)
    assert levels(lim, T)[0] == 600


def test_lower_never_raises(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=100)
    assert lim.reserve(P, 100, now_ms=T).granted
    lim.lower(P, remaining_tokens=950, remaining_requests=None, now_ms=T)
    assert levels(lim, T) == (900, 99)
    lim.lower(P, remaining_tokens=500, remaining_requests=None, now_ms=T)
    assert levels(lim, T) == (500, 99)
    lim.lower(P, remaining_tokens=None, remaining_requests=120, now_ms=T)
    assert levels(lim, T) == (500, 99)
    lim.lower(P, remaining_tokens=None, remaining_requests=3, now_ms=T)
    assert levels(lim, T) == (500, 3)
    lim.lower(P, remaining_tokens=None, remaining_requests=None, now_ms=T)
    assert levels(lim, T) == (500, 3)
    # From there it refills as usual.
    assert levels(lim, T + 6_000) == (600, 13)


def test_drain_empties_both_and_keeps_debt(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    lim.drain(P, now_ms=T)
    s = lim.status(P, now_ms=T)
    assert (s.tokens, s.requests) == (0, 0)
    # A minimal call waits for one token (100 ms) and one request (6000 ms).
    assert s.wait_ms == 6_000
    d = lim.reserve(P, 600, now_ms=T + 60_000)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 900, now_ms=T + 60_000)
    lim.drain(P, now_ms=T + 60_000)
    assert levels(lim, T + 60_000) == (-300, 0)


# -- Redis facts: script cache, cluster slot, expiry, unreachable -----------------------------


def test_script_reload_after_script_flush(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    assert lim.reserve(P, 100, now_ms=T).granted
    redis_client.script_flush()
    assert lim.reserve(P, 100, now_ms=T).granted
    assert levels(lim, T) == (400, 8)


def test_keys_of_one_provider_share_a_cluster_slot(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    tokens_key, requests_key = lim.keys_for(P)
    assert tokens_key == f"{key_prefix}:rl:{{groq}}:tokens"
    assert requests_key == f"{key_prefix}:rl:{{groq}}:requests"
    assert key_slot(tokens_key.encode()) == key_slot(requests_key.encode()) == key_slot(b"groq")
    assert lim.reserve(P, 1, now_ms=T).granted
    assert redis_client.exists(tokens_key, requests_key) == 2


def test_keys_expire_after_refilling(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    assert lim.reserve(P, 600).granted  # empties the token bucket: 60 s to refill
    tokens_key, requests_key = lim.keys_for(P)
    assert 60_000 < redis_client.pttl(tokens_key) <= 65_000
    assert 0 < redis_client.pttl(requests_key) <= 6_000 + 5_000


def test_unreachable_redis_raises_limiter_unavailable() -> None:
    client = dead_client()
    lim = TokenBucketLimiter(client, {P: BucketLimits(tpm=600, rpm=10)})
    with pytest.raises(LimiterUnavailable, match="Redis is unreachable"):
        lim.reserve(P, 1)
    with pytest.raises(LimiterUnavailable):
        lim.status(P)
    with pytest.raises(LimiterUnavailable):
        lim.drain(P)
    with pytest.raises(LimiterUnavailable):
        lim.reconcile(Reservation(P, 10, 1), 20)
    with pytest.raises(LimiterUnavailable):
        lim.lower(P, remaining_tokens=1, remaining_requests=1)


def test_unlimited_provider_never_touches_redis() -> None:
    lim = TokenBucketLimiter(dead_client(), {P: BucketLimits(tpm=600, rpm=10)})
    d = lim.reserve("local", 10_000_000, requests=50)
    assert d == Decision(True, 0, False, Reservation("local", 10_000_000, 50))
    assert d.reservation is not None
    lim.reconcile(d.reservation, 1)
    lim.lower("local", remaining_tokens=0, remaining_requests=0)
    lim.drain("local")
    assert lim.limits_for("local") is None
    assert lim.limits_for(P) == BucketLimits(tpm=600, rpm=10)
    with pytest.raises(ValueError, match="no rate limits"):
        lim.status("local")


def test_lowered_capacity_clamps_the_stored_level(redis_client: Any, key_prefix: str) -> None:
    big = make(redis_client, key_prefix, tpm=1_000, rpm=10)
    assert big.reserve(P, 100, now_ms=T).granted  # 900 stored
    small = make(redis_client, key_prefix, tpm=500, rpm=10)
    assert levels(small, T) == (500, 9)


# -- values ----------------------------------------------------------------------------------


def test_bucket_limits() -> None:
    lim = BucketLimits(tpm=6_000, rpm=30)
    assert (lim.token_capacity, lim.request_capacity) == (6_000, 30)
    burst = BucketLimits(tpm=6_000, rpm=30, burst_tokens=1_000, burst_requests=5)
    assert (burst.token_capacity, burst.request_capacity) == (1_000, 5)
    for bad in (
        {"tpm": 0, "rpm": 1},
        {"tpm": 1, "rpm": -1},
        {"tpm": 1, "rpm": 1, "burst_tokens": 0},
        {"tpm": 10**10, "rpm": 1},
    ):
        with pytest.raises(ValueError):
            BucketLimits(**bad)


def test_bad_arguments_are_refused(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10)
    with pytest.raises(ValueError):
        lim.reserve(P, -1)
    with pytest.raises(ValueError):
        lim.reserve(P, 1, requests=-1)


def test_estimates() -> None:
    assert [estimate_prompt_tokens(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert reservation_tokens(10, 100) == 103
    with pytest.raises(ValueError):
        estimate_prompt_tokens(-1)


# -- daily caps: more buckets in the same script ----------------------------------------------

# T is 2023-11-14 22:13:20 UTC (14:13:20 in Los Angeles, PST).
UTC_MIDNIGHT = 1_700_006_400_000  # 2023-11-15 00:00 UTC
LA_MIDNIGHT = 1_700_035_200_000  # 2023-11-15 00:00 PST = 08:00 UTC
DAY = 86_400_000


def day_levels(lim: TokenBucketLimiter, now_ms: int) -> tuple[int | None, int | None]:
    s = lim.status(P, now_ms=now_ms)
    return s.tokens_today, s.requests_today


def test_requests_per_day_wait_exactly_until_utc_midnight(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000_000, rpm=100, rpd=2)
    assert lim.reserve(P, 10, now_ms=T).granted
    assert lim.reserve(P, 10, now_ms=T + 1_000).granted
    # The minute buckets have room; the day has none until it resets at midnight UTC.
    assert lim.reserve(P, 10, now_ms=T + 1_000) == Decision(False, UTC_MIDNIGHT - T - 1_000,
                                                            False, None)
    assert lim.reserve(P, 10, now_ms=UTC_MIDNIGHT - 1).wait_ms == 1
    s = lim.status(P, now_ms=T + 2_000)
    assert (s.requests_today, s.request_day_capacity, s.tokens_today, s.token_day_capacity) == (
        0, 2, None, None)
    assert s.wait_ms == UTC_MIDNIGHT - T - 2_000 and s.day_resets_at_ms == UTC_MIDNIGHT
    # A new day: full again, whatever was spent.
    assert lim.reserve(P, 10, now_ms=UTC_MIDNIGHT).granted
    assert day_levels(lim, UTC_MIDNIGHT) == (None, 1)
    assert lim.status(P, now_ms=UTC_MIDNIGHT).day_resets_at_ms == UTC_MIDNIGHT + DAY


def test_tokens_per_day_reset_at_midnight_in_the_providers_zone(redis_client: Any,
                                                                 key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=10_000, rpm=100, tpd=1_000,
               day_reset="America/Los_Angeles")
    assert lim.reserve(P, 900, now_ms=T).granted
    assert day_levels(lim, T) == (100, None)
    # 101 tokens: the minute refills in 0.6 s, the day only at midnight in Los Angeles.
    assert lim.reserve(P, 101, now_ms=T + 60_000).wait_ms == LA_MIDNIGHT - T - 60_000
    assert not lim.reserve(P, 101, now_ms=UTC_MIDNIGHT).granted  # UTC's midnight is not the one
    assert lim.reserve(P, 101, now_ms=LA_MIDNIGHT).granted
    assert day_levels(lim, LA_MIDNIGHT) == (899, None)


def test_a_rolling_day_refills_continuously(redis_client: Any, key_prefix: str) -> None:
    # 1,440 requests a day is one a minute; 8,640 tokens a day one every 10 s.
    lim = make(redis_client, key_prefix, tpm=100_000, rpm=10_000, rpd=1_440, tpd=8_640,
               day_reset="rolling")
    assert lim.reserve(P, 100, requests=1_440, now_ms=T).granted
    assert lim.reserve(P, 1, now_ms=T).wait_ms == 60_000  # the request, not the token (10 s)
    assert lim.reserve(P, 1, now_ms=T + 59_999).wait_ms == 1
    assert lim.reserve(P, 1, now_ms=T + 60_000).granted
    s = lim.status(P, now_ms=T + 60_000)
    assert (s.tokens_today, s.requests_today) == (8_545, 0)
    # Full again once the emptier bucket has refilled: the requests, 1,440 minutes from now.
    assert s.day_resets_at_ms == T + 60_000 + DAY


def test_every_bucket_is_debited_or_none(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=1, tpd=5_000, rpd=10)
    assert lim.reserve(P, 100, now_ms=T).granted
    assert not lim.reserve(P, 100, now_ms=T).granted  # the minute's one request is gone
    assert day_levels(lim, T) == (4_900, 9)  # so the day was not charged either
    day = make(redis_client, key_prefix + "d", tpm=10_000, rpm=100, tpd=150, rpd=10)
    assert day.reserve(P, 100, now_ms=T).granted
    assert not day.reserve(P, 100, now_ms=T).granted  # 50 tokens left today
    assert levels(day, T) == (9_900, 99)  # the minute buckets kept what they had


def test_a_call_larger_than_the_day_never_fits(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=10_000, rpm=100, tpd=500, rpd=3)
    assert lim.reserve(P, 501, now_ms=T) == Decision(False, 0, True, None)
    assert lim.reserve(P, 1, requests=4, now_ms=T) == Decision(False, 0, True, None)
    # The script says so on its own too (another process may run with other limits).
    source = resources.files("masterplan.ratelimit").joinpath("bucket.lua").read_text()
    script = redis_client.register_script(source)
    keys = [*lim.keys_for(P), *lim.day_keys_for(P)]
    args = ["reserve", T, 10_000, 10_000, 100, 100, 501, 1, "", "", 500, 3, UTC_MIDNIGHT]
    assert script(keys=keys, args=args) == -1
    assert redis_client.exists(*keys) == 0


def test_the_day_is_settled_with_the_minute(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=10_000, rpm=100, tpd=5_000)
    d = lim.reserve(P, 1_000, now_ms=T)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 400, now_ms=T)  # a refund to both
    assert (levels(lim, T)[0], day_levels(lim, T)[0]) == (9_600, 4_600)
    d = lim.reserve(P, 1_000, now_ms=T)
    assert d.reservation is not None
    lim.reconcile(d.reservation, 4_000, now_ms=T)  # debt in both
    assert day_levels(lim, T)[0] == 600
    lim.reconcile(Reservation(P, 0, 0), 1_600, now_ms=T)
    assert day_levels(lim, T)[0] == -1_000
    assert lim.reserve(P, 1, now_ms=T).wait_ms == UTC_MIDNIGHT - T  # debt waits for the reset
    assert day_levels(lim, UTC_MIDNIGHT) == (5_000, None)  # and a new day forgets it


def test_a_provider_that_counts_the_reservation_refunds_nothing(redis_client: Any,
                                                                key_prefix: str) -> None:
    actual = make(redis_client, key_prefix + "a", tpm=10_000, rpm=100, tpd=50_000)
    reserved = make(redis_client, key_prefix, tpm=10_000, rpm=100, tpd=50_000, counts="reserved")
    for lim in (actual, reserved):
        d = lim.reserve(P, 1_000, now_ms=T)
        assert d.reservation is not None
        lim.settle(d.reservation, 300, now_ms=T)
    assert (levels(actual, T)[0], day_levels(actual, T)[0]) == (9_700, 49_700)
    assert (levels(reserved, T)[0], day_levels(reserved, T)[0]) == (9_000, 49_000)
    # More than reserved is debt either way.
    d = reserved.reserve(P, 1_000, now_ms=T)
    assert d.reservation is not None
    reserved.settle(d.reservation, 1_500, now_ms=T)
    assert levels(reserved, T)[0] == 7_500
    # A call the provider never counted is handed back whole, whatever it charges for answers.
    d = reserved.reserve(P, 1_000, now_ms=T)
    assert d.reservation is not None
    reserved.reconcile(d.reservation, 0, now_ms=T)
    assert levels(reserved, T)[0] == 7_500


def test_headroom_is_kept_in_the_minute_buckets_only(redis_client: Any, key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=100, tpd=500)
    # 450 of the day's 500 leaves less than a fifth of it, but the headroom is a minute's.
    assert lim.reserve(P, 450, keep=0.2, now_ms=T).granted
    assert day_levels(lim, T)[0] == 50


def test_a_redis_clock_past_the_callers_midnight_is_in_the_next_window(redis_client: Any,
                                                                        key_prefix: str) -> None:
    # The caller still believes the day ends at UTC_MIDNIGHT; Redis's clock is already past it.
    source = resources.files("masterplan.ratelimit").joinpath("bucket.lua").read_text()
    script = redis_client.register_script(source)
    lim = make(redis_client, key_prefix, tpm=1_000, rpm=100, rpd=1)
    keys = [*lim.keys_for(P), *lim.day_keys_for(P)]
    limits = [1_000, 1_000, 100, 100]
    now = UTC_MIDNIGHT + 10
    assert script(keys=keys, args=["reserve", now, *limits, 1, 1, "", "", "", 1, UTC_MIDNIGHT]) == 0
    assert script(keys=keys, args=["reserve", now, *limits, 1, 1, "", "", "", 1, UTC_MIDNIGHT]) == (
        DAY - 10)
    wait, _, _, day_tokens, day_requests, resets = script(
        keys=keys, args=["peek", now, *limits, "", "", "", "", "", 1, UTC_MIDNIGHT])
    assert (wait, day_tokens, day_requests, resets) == (DAY - 10, None, 0, UTC_MIDNIGHT + DAY)


def test_day_keys_share_the_providers_slot_and_expire_after_the_window(redis_client: Any,
                                                                       key_prefix: str) -> None:
    lim = make(redis_client, key_prefix, tpm=600, rpm=10, tpd=10_000, rpd=100)
    day_tokens, day_requests = lim.day_keys_for(P)
    assert day_tokens == f"{key_prefix}:rl:{{groq}}:tokens-day"
    assert key_slot(day_tokens.encode()) == key_slot(day_requests.encode()) == key_slot(b"groq")
    assert lim.reserve(P, 100).granted  # on Redis's own clock
    until_midnight = DAY - int(time.time() * 1000) % DAY
    for key in (day_tokens, day_requests):
        assert until_midnight - 10_000 < redis_client.pttl(key) <= until_midnight + 5_000
    rolling = make(redis_client, key_prefix + "r", tpm=600, rpm=10, rpd=1_440, day_reset="rolling")
    assert rolling.reserve(P, 1).granted  # one of 1,440 a day: back in a minute
    assert 55_000 < redis_client.pttl(rolling.day_keys_for(P)[1]) <= 65_000


def test_daily_limits_are_checked() -> None:
    lim = BucketLimits(tpm=6_000, rpm=30, tpd=500_000, rpd=14_400, day_reset="rolling")
    assert lim.daily and not BucketLimits(tpm=1, rpm=1).daily
    for bad in (
        {"tpd": 0},
        {"rpd": 10**8 + 1},
        {"day_reset": "Mars/Olympus_Mons"},
        {"day_reset": "tomorrow"},
        {"counts": "both"},
    ):
        with pytest.raises(ValueError):
            BucketLimits(tpm=1, rpm=1, **bad)  # type: ignore[arg-type]
