"""Random operation sequences: the Redis script and the pure-Python model must agree exactly."""

from __future__ import annotations

import itertools
from importlib import resources
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from masterplan.ratelimit import BucketLimits, TokenBucketLimiter
from masterplan.ratelimit.day import next_reset_ms
from masterplan.ratelimit.model import DAY_UNITS_PER_TOKEN, GRANTED, NEVER_FITS, BucketModel

T0 = 1_700_000_000_000
_names = itertools.count()

# Mostly forward, sometimes not at all, now and then a little backwards (clock skew), and now
# and then by hours, so that fixed day windows end (at UTC and at Pacific midnights) and
# rolling days refill.
time_steps = st.one_of(
    st.just(0),
    st.integers(1, 2_000),
    st.integers(2_000, 120_000),
    st.integers(-2_000, -1),
    st.integers(3_600_000, 30 * 3_600_000),
)


@st.composite
def limits(draw: st.DrawFn) -> BucketLimits:
    tpm = draw(st.one_of(st.integers(1, 100), st.integers(100, 2_000_000)))
    rpm = draw(st.integers(1, 1_000))
    burst_tokens = draw(st.none() | st.integers(1, 2 * tpm))
    burst_requests = draw(st.none() | st.integers(1, 2 * rpm))
    # Daily caps, sometimes none, sometimes only one of the two, often tight enough to bind.
    tpd = draw(st.none() | st.integers(1, 3 * tpm) | st.just(100_000_000))
    rpd = draw(st.none() | st.integers(1, 40))
    day_reset = draw(st.sampled_from(["UTC", "rolling", "America/Los_Angeles"]))
    counts = draw(st.sampled_from(["actual", "reserved"]))
    return BucketLimits(tpm, rpm, burst_tokens, burst_requests, tpd=tpd, rpd=rpd,
                        day_reset=day_reset, counts=counts)


@st.composite
def operations(draw: st.DrawFn, lim: BucketLimits) -> list[tuple[Any, ...]]:
    cap = lim.token_capacity
    amount = st.integers(0, cap + cap // 5 + 1)
    op = st.one_of(
        st.tuples(st.just("reserve"), amount, st.integers(0, 3), st.sampled_from([0.0, 0.2, 0.5]),
                  time_steps),
        st.tuples(st.just("reconcile"), st.integers(0, 2 * cap), time_steps),
        st.tuples(st.just("settle"), st.integers(0, 2 * cap), time_steps),
        st.tuples(
            st.just("lower"),
            st.none() | st.integers(0, cap),
            st.none() | st.integers(0, lim.request_capacity),
            time_steps,
        ),
        st.tuples(st.just("drain"), time_steps),
    )
    return draw(st.lists(op, min_size=1, max_size=30))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_script_matches_model(redis_client: Any, key_prefix: str, data: st.DataObject) -> None:
    lim_cfg = data.draw(limits(), label="limits")
    ops = data.draw(operations(lim_cfg), label="ops")

    provider = f"p{next(_names)}"  # fresh buckets for every example
    limiter = TokenBucketLimiter(redis_client, {provider: lim_cfg}, prefix=key_prefix)
    model = BucketModel(lim_cfg.tpm, lim_cfg.token_capacity, lim_cfg.rpm, lim_cfg.request_capacity,
                        tpd=lim_cfg.tpd, rpd=lim_cfg.rpd, day_reset=lim_cfg.day_reset)
    source = resources.files("masterplan.ratelimit").joinpath("bucket.lua").read_text()
    script = redis_client.register_script(source)
    static = [lim_cfg.tpm, lim_cfg.token_capacity, lim_cfg.rpm, lim_cfg.request_capacity]

    def raw_peek(now: int) -> tuple[int | None, ...]:
        # Levels in exact units, straight from the script.
        if not lim_cfg.daily:
            wait, tl, rl = script(
                keys=list(limiter.keys_for(provider)), args=["peek", now, *static, "", ""]
            )
            return int(wait), int(tl), int(rl), None, None, None
        window = next_reset_ms(lim_cfg.day_reset, now) or "rolling"
        day = ["" if lim_cfg.tpd is None else lim_cfg.tpd, "" if lim_cfg.rpd is None else lim_cfg.rpd]
        reply = script(keys=[*limiter.keys_for(provider), *limiter.day_keys_for(provider)],
                       args=["peek", now, *static, "", "", "", "", *day, window])
        return tuple(None if v is None else int(v) for v in reply)

    now = T0
    last = None  # the last granted reservation, for reconcile
    for step in ops:
        kind, dt = step[0], step[-1]
        now = max(0, now + dt)
        if kind == "reserve":
            _, tokens, requests, keep, _ = step
            got = limiter.reserve(provider, tokens, requests=requests, keep=keep, now_ms=now)
            # The headroom to leave: the share of capacity, or what the call leaves of it.
            keep_t = max(0, min(int(lim_cfg.token_capacity * keep), lim_cfg.token_capacity - tokens))
            keep_r = max(0, min(int(lim_cfg.request_capacity * keep),
                                lim_cfg.request_capacity - requests))
            want = model.reserve(tokens, requests, now, keep_t, keep_r)
            assert got.granted == (want.code == GRANTED), step
            assert got.never_fits == (want.code == NEVER_FITS), step
            assert got.wait_ms == want.wait_ms, step
            if got.granted:
                last = got.reservation
        elif kind == "reconcile":
            if last is None:
                continue
            actual = step[1]
            limiter.reconcile(last, actual, now_ms=now)
            if actual != last.tokens:  # the limiter sends nothing to Redis for an exact one
                model.adjust(actual - last.tokens, now)
            last = None
        elif kind == "settle":
            if last is None:
                continue
            used = step[1]
            limiter.settle(last, used, now_ms=now)
            if lim_cfg.counts == "reserved":  # charged at admission: no refund, only debt
                used = max(used, last.tokens)
            if used != last.tokens:
                model.adjust(used - last.tokens, now)
            last = None
        elif kind == "lower":
            _, rem_t, rem_r, _ = step
            limiter.lower(provider, remaining_tokens=rem_t, remaining_requests=rem_r, now_ms=now)
            model.lower(rem_t, rem_r, now)
        else:
            limiter.drain(provider, now_ms=now)
            model.drain(now)

        expected = model.peek(now)
        assert raw_peek(now) == (
            expected.wait_ms,
            expected.token_level,
            expected.request_level,
            expected.day_token_level,
            expected.day_request_level,
            expected.day_resets_at,
        ), step
        status = limiter.status(provider, now_ms=now)
        assert status.tokens == expected.token_level // 60_000
        assert status.requests == expected.request_level // 60_000
        assert status.wait_ms == expected.wait_ms
        if expected.day_token_level is not None:
            assert status.tokens_today == expected.day_token_level // DAY_UNITS_PER_TOKEN
        if expected.day_request_level is not None:
            assert status.requests_today == expected.day_request_level // DAY_UNITS_PER_TOKEN
        assert status.day_resets_at_ms == expected.day_resets_at
