"""A pure-Python model of the buckets in `bucket.lua`, with the same integer math.

The property test drives this model and the Redis script side by side and expects the same
decisions and the same levels. Time is always explicit (`now_ms`); nothing expires here
(an expired Redis key reads as a full bucket, which is what the model computes anyway).

Levels are kept in *units*. A minute bucket counts 1/60000 of a token (or request) per unit: with
a limit of L per minute it refills exactly L units per millisecond. A day bucket counts
1/86,400,000 per unit, so a rolling day with a limit of L per day also refills exactly L units per
millisecond; a fixed day window does not refill at all, it is full again at its end. Refill,
debit and wait are all exact integers with no remainder to carry between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from masterplan.ratelimit.day import DAY_MS, ROLLING, next_reset_ms

UNITS_PER_TOKEN = 60_000
"""Units per token or request in a minute bucket: one per millisecond of a minute."""
DAY_UNITS_PER_TOKEN = DAY_MS
"""Units per token or request in a day bucket: one per millisecond of a day."""

GRANTED = 1
WAIT = 0
NEVER_FITS = -1


def ceil_div(a: int, b: int) -> int:
    """Ceiling of a / b for integers, b > 0."""
    return -(-a // b)


def window_end(now: int, reset: int) -> int:
    """The end of the fixed day window holding `now`, given one reset the caller knows of:
    the first `reset + k * DAY_MS` after `now` (the script's rule, for a caller whose clock
    is behind Redis's)."""
    if now < reset:
        return reset
    return reset + ((now - reset) // DAY_MS + 1) * DAY_MS


@dataclass
class _Bucket:
    """One bucket's stored state: level in units and a time in ms (a minute or rolling bucket:
    its last refill; a fixed day window: its end)."""

    level: int
    ts: int


@dataclass(frozen=True)
class ModelResult:
    """One op's outcome: code (1 granted, 0 wait, -1 never fits), wait, levels in units.

    The script's replies carry the same facts: reserve's wait (0 granted, -1 never fits) and
    peek's wait and levels. The day levels are None for a provider without that daily cap, and
    `day_resets_at` (epoch ms) is when the day buckets are full again (None without any).
    """

    code: int
    wait_ms: int
    token_level: int
    request_level: int
    day_token_level: int | None = None
    day_request_level: int | None = None
    day_resets_at: int | None = None


class BucketModel:
    """Every bucket of one provider, stepped by explicit `now_ms`."""

    def __init__(self, tpm: int, token_capacity: int, rpm: int, request_capacity: int, *,
                 tpd: int | None = None, rpd: int | None = None, day_reset: str = "UTC") -> None:
        self.token_rate = tpm
        self.token_full = token_capacity * UNITS_PER_TOKEN
        self.request_rate = rpm
        self.request_full = request_capacity * UNITS_PER_TOKEN
        self.tpd, self.rpd, self.day_reset = tpd, rpd, day_reset
        self._tokens: _Bucket | None = None
        self._requests: _Bucket | None = None
        self._day_tokens: _Bucket | None = None
        self._day_requests: _Bucket | None = None

    # -- state ---------------------------------------------------------------------------

    @staticmethod
    def _load(stored: _Bucket | None, full: int, rate: int, now: int) -> _Bucket:
        if stored is None:
            return _Bucket(full, now)
        level, ts = stored.level, stored.ts
        if now > ts:
            if level < full:
                elapsed = now - ts
                level = full if elapsed >= ceil_div(full - level, rate) else level + elapsed * rate
            ts = now
        return _Bucket(min(level, full), ts)

    def _load_day(self, stored: _Bucket | None, limit: int, now: int) -> _Bucket:
        full = limit * DAY_UNITS_PER_TOKEN
        if self.day_reset == ROLLING:
            return self._load(stored, full, limit, now)
        if stored is None or now >= stored.ts:
            reset = next_reset_ms(self.day_reset, now)
            assert reset is not None
            return _Bucket(full, window_end(now, reset))
        return _Bucket(min(stored.level, full), stored.ts)

    def _load_all(self, now: int) -> tuple[_Bucket, _Bucket, _Bucket | None, _Bucket | None]:
        return (
            self._load(self._tokens, self.token_full, self.token_rate, now),
            self._load(self._requests, self.request_full, self.request_rate, now),
            None if self.tpd is None else self._load_day(self._day_tokens, self.tpd, now),
            None if self.rpd is None else self._load_day(self._day_requests, self.rpd, now),
        )

    @staticmethod
    def _wait_for(level: int, want: int, rate: int) -> int:
        return 0 if level >= want else ceil_div(want - level, rate)

    def _day_wait(self, b: _Bucket | None, limit: int | None, want: int, now: int) -> int:
        if b is None or limit is None or b.level >= want:
            return 0
        if self.day_reset == ROLLING:
            return ceil_div(want - b.level, limit)
        return b.ts - now  # full again when the window ends

    def _result(self, code: int, wait: int, now: int) -> ModelResult:
        t, r, dt, dr = self._load_all(now)
        return ModelResult(code, wait, t.level, r.level, None if dt is None else dt.level,
                           None if dr is None else dr.level, self._resets_at(dt, dr, now))

    def _resets_at(self, dt: _Bucket | None, dr: _Bucket | None, now: int) -> int | None:
        days = [(b, lim) for b, lim in ((dt, self.tpd), (dr, self.rpd))
                if b is not None and lim is not None]
        if not days:
            return None
        if self.day_reset != ROLLING:
            return max(b.ts for b, _ in days)
        return now + max(self._wait_for(b.level, lim * DAY_UNITS_PER_TOKEN, lim) for b, lim in days)

    # -- operations (same names and semantics as the script's ops) -------------------------

    def reserve(self, tokens: int, requests: int, now_ms: int, keep_tokens: int = 0,
                keep_requests: int = 0) -> ModelResult:
        t, r, dt, dr = self._load_all(now_ms)
        want_t, want_r = tokens * UNITS_PER_TOKEN, requests * UNITS_PER_TOKEN
        day_t, day_r = tokens * DAY_UNITS_PER_TOKEN, requests * DAY_UNITS_PER_TOKEN
        if (want_t > self.token_full or want_r > self.request_full
                or (self.tpd is not None and tokens > self.tpd)
                or (self.rpd is not None and requests > self.rpd)):
            return ModelResult(NEVER_FITS, 0, t.level, r.level)
        wait = max(
            self._wait_for(t.level, want_t + keep_tokens * UNITS_PER_TOKEN, self.token_rate),
            self._wait_for(r.level, want_r + keep_requests * UNITS_PER_TOKEN, self.request_rate),
            self._day_wait(dt, self.tpd, day_t, now_ms),
            self._day_wait(dr, self.rpd, day_r, now_ms),
        )
        if wait > 0:
            return ModelResult(WAIT, wait, t.level, r.level)
        t.level -= want_t
        r.level -= want_r
        self._tokens, self._requests = t, r
        if dt is not None:
            dt.level -= day_t
            self._day_tokens = dt
        if dr is not None:
            dr.level -= day_r
            self._day_requests = dr
        return ModelResult(GRANTED, 0, t.level, r.level)

    def adjust(self, delta_tokens: int, now_ms: int) -> ModelResult:
        t, _, dt, _ = self._load_all(now_ms)
        t.level = min(t.level - delta_tokens * UNITS_PER_TOKEN, self.token_full)
        self._tokens = t
        if dt is not None and self.tpd is not None:
            dt.level = min(dt.level - delta_tokens * DAY_UNITS_PER_TOKEN,
                           self.tpd * DAY_UNITS_PER_TOKEN)
            self._day_tokens = dt
        return self._result(GRANTED, 0, now_ms)

    def lower(
        self, remaining_tokens: int | None, remaining_requests: int | None, now_ms: int
    ) -> ModelResult:
        t, r, _, _ = self._load_all(now_ms)
        if remaining_tokens is not None:
            t.level = min(t.level, remaining_tokens * UNITS_PER_TOKEN)
            self._tokens = t
        if remaining_requests is not None:
            r.level = min(r.level, remaining_requests * UNITS_PER_TOKEN)
            self._requests = r
        return self._result(GRANTED, 0, now_ms)

    def drain(self, now_ms: int) -> ModelResult:
        t, r, _, _ = self._load_all(now_ms)
        t.level = min(t.level, 0)
        r.level = min(r.level, 0)
        self._tokens, self._requests = t, r
        return self._result(GRANTED, 0, now_ms)

    def peek(self, now_ms: int) -> ModelResult:
        t, r, dt, dr = self._load_all(now_ms)
        wait = max(
            self._wait_for(t.level, UNITS_PER_TOKEN, self.token_rate),
            self._wait_for(r.level, UNITS_PER_TOKEN, self.request_rate),
            self._day_wait(dt, self.tpd, DAY_UNITS_PER_TOKEN, now_ms),
            self._day_wait(dr, self.rpd, DAY_UNITS_PER_TOKEN, now_ms),
        )
        return ModelResult(GRANTED if wait == 0 else WAIT, wait, t.level, r.level,
                           None if dt is None else dt.level, None if dr is None else dr.level,
                           self._resets_at(dt, dr, now_ms))
