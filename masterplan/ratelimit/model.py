"""A pure-Python model of the bucket in `bucket.lua`, with the same integer math.

The property test drives this model and the Redis script side by side and expects the same
decisions and the same levels. Time is always explicit (`now_ms`); nothing expires here
(an expired Redis key reads as a full bucket, which is what the model computes anyway).

Levels are kept in *units*: 1/60000 of a token (or request). A bucket with a limit of L per
minute then refills exactly L units per millisecond, so refill, debit and wait are all exact
integers with no remainder to carry between calls.
"""

from __future__ import annotations

from dataclasses import dataclass

UNITS_PER_TOKEN = 60_000
"""Units per token or request: one per millisecond of a minute."""

GRANTED = 1
WAIT = 0
NEVER_FITS = -1


def ceil_div(a: int, b: int) -> int:
    """Ceiling of a / b for integers, b > 0."""
    return -(-a // b)


@dataclass
class _Bucket:
    """One bucket's stored state: level in units and the ms of its last refill."""

    level: int
    ts: int


@dataclass(frozen=True)
class ModelResult:
    """One op's outcome: code (1 granted, 0 wait, -1 never fits), wait, levels in units.

    The script's replies carry the same facts: reserve's wait (0 granted, -1 never fits) and
    peek's wait and levels.
    """

    code: int
    wait_ms: int
    token_level: int
    request_level: int


class BucketModel:
    """Both buckets of one provider, stepped by explicit `now_ms`."""

    def __init__(self, tpm: int, token_capacity: int, rpm: int, request_capacity: int) -> None:
        self.token_rate = tpm
        self.token_full = token_capacity * UNITS_PER_TOKEN
        self.request_rate = rpm
        self.request_full = request_capacity * UNITS_PER_TOKEN
        self._tokens: _Bucket | None = None
        self._requests: _Bucket | None = None

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

    def _load_both(self, now: int) -> tuple[_Bucket, _Bucket]:
        return (
            self._load(self._tokens, self.token_full, self.token_rate, now),
            self._load(self._requests, self.request_full, self.request_rate, now),
        )

    @staticmethod
    def _wait_for(level: int, want: int, rate: int) -> int:
        return 0 if level >= want else ceil_div(want - level, rate)

    # -- operations (same names and semantics as the script's ops) -------------------------

    def reserve(self, tokens: int, requests: int, now_ms: int, keep_tokens: int = 0,
                keep_requests: int = 0) -> ModelResult:
        t, r = self._load_both(now_ms)
        want_t, want_r = tokens * UNITS_PER_TOKEN, requests * UNITS_PER_TOKEN
        if want_t > self.token_full or want_r > self.request_full:
            return ModelResult(NEVER_FITS, 0, t.level, r.level)
        wait = max(
            self._wait_for(t.level, want_t + keep_tokens * UNITS_PER_TOKEN, self.token_rate),
            self._wait_for(r.level, want_r + keep_requests * UNITS_PER_TOKEN, self.request_rate),
        )
        if wait > 0:
            return ModelResult(WAIT, wait, t.level, r.level)
        t.level -= want_t
        r.level -= want_r
        self._tokens, self._requests = t, r
        return ModelResult(GRANTED, 0, t.level, r.level)

    def adjust(self, delta_tokens: int, now_ms: int) -> ModelResult:
        t, r = self._load_both(now_ms)
        t.level = min(t.level - delta_tokens * UNITS_PER_TOKEN, self.token_full)
        self._tokens = t
        return ModelResult(GRANTED, 0, t.level, r.level)

    def lower(
        self, remaining_tokens: int | None, remaining_requests: int | None, now_ms: int
    ) -> ModelResult:
        t, r = self._load_both(now_ms)
        if remaining_tokens is not None:
            t.level = min(t.level, remaining_tokens * UNITS_PER_TOKEN)
            self._tokens = t
        if remaining_requests is not None:
            r.level = min(r.level, remaining_requests * UNITS_PER_TOKEN)
            self._requests = r
        return ModelResult(GRANTED, 0, t.level, r.level)

    def drain(self, now_ms: int) -> ModelResult:
        t, r = self._load_both(now_ms)
        t.level = min(t.level, 0)
        r.level = min(r.level, 0)
        self._tokens, self._requests = t, r
        return ModelResult(GRANTED, 0, t.level, r.level)

    def peek(self, now_ms: int) -> ModelResult:
        t, r = self._load_both(now_ms)
        wait = max(
            self._wait_for(t.level, UNITS_PER_TOKEN, self.token_rate),
            self._wait_for(r.level, UNITS_PER_TOKEN, self.request_rate),
        )
        return ModelResult(GRANTED if wait == 0 else WAIT, wait, t.level, r.level)
