"""Shared provider cooldowns and circuit breakers in Redis, seen by every worker on every machine.

A cooldown is a key with a TTL: no clock is read anywhere, so workers' clocks cannot disagree.
- 429 / a 503 or 529 with a Retry-After: cool down for the provider's own retry-after; a longer
  wait extends the cooldown, a shorter one never shortens it (one Lua call compares PTTLs).
- The circuit: `circuit_failures` transient failures in a row (5xx, 503/529, timeouts, silent or
  broken streams: the error classes that say `trips_circuit`) open it for `circuit_open_s`. Each
  further opening in a row doubles that, up to `circuit_max_open_s`. When the open time is over
  the circuit is half-open: exactly one call across all workers may probe the provider (it holds
  a SET NX key for `probe_ttl_s`); everyone else skips it as still open. The probe's success
  closes the circuit and forgets the growth; its failure re-opens it at once, doubled.
- Auth and billing errors disable the provider for `auth_disable_s`.

Keys per provider (hash-tagged, so a cluster keeps them on one slot): `until` (the cooldown,
`<kind>:<reason>`), `fails` (failures in a row), `opens` (openings in a row, not yet closed by a
success) and `probe` (who is probing the half-open circuit).

Redis unreachable (down, loading, read-only, ...): every method raises `LimiterUnavailable`, the
same error and the same test of "unreachable" as the rate limiter, so the router has one thing
to handle.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from masterplan.ratelimit.limiter import unavailable_as_limiter_error

log = logging.getLogger(__name__)

# Extend-only: set the cooldown when the new wait ends later than the current one.
_EXTEND = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
  return 1
end
return 0
"""

# One transient failure. KEYS: until, fails, opens. ARGV: circuit_failures, open_ms, max_open_ms,
# fails_ttl_ms, opens_ttl_ms, reason. Returns {opened, failures in a row, open ms, opening}.
# Closed (no opening pending): count it; the N-th in a row opens the circuit. Half-open (an
# opening pending, its time over): the probe failed, re-open at once. Open: a call that started
# before it opened failed late; it says nothing new and must not double the time again.
_FAIL = """
local opens = tonumber(redis.call('GET', KEYS[3]) or '0')
local count = 0
if opens > 0 then
  local current = redis.call('GET', KEYS[1])
  if current and string.sub(current, 1, 13) == 'circuit_open:' then
    return {0, 0, 0, opens}
  end
else
  count = redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  if count < tonumber(ARGV[1]) then
    return {0, count, 0, 0}
  end
  redis.call('DEL', KEYS[2])
end
local ms = math.floor(math.min(tonumber(ARGV[2]) * 2 ^ opens, tonumber(ARGV[3])))
local why
if opens > 0 then
  why = 'the half-open probe failed'
else
  why = count .. ' failures in a row'
end
local value = string.format('circuit_open:open %g s (opening %d) after %s; last: %s',
                            ms / 1000, opens + 1, why, ARGV[6])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], value, 'PX', ms)
end
redis.call('SET', KEYS[3], opens + 1, 'PX', ARGV[5])
return {1, count, ms, opens + 1}
"""

# Release the probe only if it is still ours (it may have expired and been taken by another).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class CooldownKind(StrEnum):
    RATE_LIMITED = "rate_limited"  # transient: worth waiting for
    CIRCUIT_OPEN = "circuit_open"  # the provider does not answer: not worth waiting for
    DISABLED = "disabled"  # auth or billing: not worth waiting for within a job


@dataclass(frozen=True)
class ProviderState:
    name: str
    cooling_ms: int  # 0 when not cooling down
    kind: CooldownKind | None
    reason: str | None
    failures: int  # consecutive transient failures (towards the circuit)
    opens: int = 0  # consecutive circuit openings not yet closed by a success

    @property
    def available(self) -> bool:
        return self.cooling_ms <= 0

    @property
    def half_open(self) -> bool:
        """The circuit's open time is over but no call has succeeded since: one probe may go."""
        return self.available and self.opens > 0

    @property
    def circuit(self) -> str:
        """`open`, `half_open` or `closed` (GET /v1/providers)."""
        if self.kind is CooldownKind.CIRCUIT_OPEN:
            return "open"
        return "half_open" if self.half_open else "closed"


def _key(prefix: str, name: str, what: str) -> str:
    return f"{prefix}:cd:{{{name}}}:{what}"


def _guard() -> AbstractContextManager[None]:
    return unavailable_as_limiter_error("provider cooldowns")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Cooldowns:
    def __init__(
        self,
        client: Any,
        *,
        circuit_failures: int = 3,
        circuit_open_s: float = 30,
        circuit_max_open_s: float = 600,
        probe_ttl_s: float = 60,
        auth_disable_s: int = 3600,
        prefix: str = "mp",
    ) -> None:
        self._r = client
        self._extend = client.register_script(_EXTEND)
        self._fail = client.register_script(_FAIL)
        self._release = client.register_script(_RELEASE)
        self.circuit_failures = circuit_failures
        self.circuit_open_ms = max(1, round(circuit_open_s * 1000))
        self.circuit_max_open_ms = max(self.circuit_open_ms, round(circuit_max_open_s * 1000))
        self.probe_ttl_ms = max(1, round(probe_ttl_s * 1000))
        self.auth_disable_ms = auth_disable_s * 1000
        self._prefix = prefix

    def _k(self, name: str, what: str) -> str:
        return _key(self._prefix, name, what)

    def snapshot(self, names: list[str]) -> dict[str, ProviderState]:
        """Every provider's state in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for n in names:
            pipe.pttl(self._k(n, "until"))
            pipe.get(self._k(n, "until"))
            pipe.get(self._k(n, "fails"))
            pipe.get(self._k(n, "opens"))
        with _guard():
            raw = pipe.execute()
        states = {}
        for i, n in enumerate(names):
            ttl, value, fails, opens = raw[4 * i : 4 * i + 4]
            kind = reason = None
            if value is not None and ttl > 0:
                k, _, reason = _text(value).partition(":")
                kind = CooldownKind(k)
            states[n] = ProviderState(
                n, max(0, int(ttl)) if kind else 0, kind, reason, int(fails or 0),
                int(opens or 0),
            )
        return states

    def _set(self, name: str, kind: CooldownKind, ms: int, reason: str) -> bool:
        with _guard():
            done = self._extend(keys=[self._k(name, "until")], args=[max(1, ms), f"{kind}:{reason}"])
        return bool(done)

    def rate_limited(self, name: str, wait_ms: int, reason: str) -> None:
        self._set(name, CooldownKind.RATE_LIMITED, wait_ms, reason)

    def failed(self, name: str, reason: str) -> bool:
        """Count a transient failure (a half-open probe's re-opens at once); returns True when
        this one opened the circuit."""
        keys = [self._k(name, "until"), self._k(name, "fails"), self._k(name, "opens")]
        args = [self.circuit_failures, self.circuit_open_ms, self.circuit_max_open_ms,
                max(self.circuit_open_ms * 4, 60_000),
                self.circuit_max_open_ms * 2 + self.probe_ttl_ms, reason[:300]]
        with _guard():
            opened, count, ms, opening = (int(v) for v in self._fail(keys=keys, args=args))
        if opened:
            after = f"{count} failures in a row" if count else "its half-open probe failed"
            log.warning("provider %s: circuit open for %g s (opening %d in a row) after %s (%s)",
                        name, ms / 1000, opening, after, reason, extra={"provider": name})
        return bool(opened)

    def probe(self, name: str) -> str | None:
        """Claim the one probe of a half-open circuit: a token to release it with, or None when
        another call (on any worker) holds it. It expires by itself after `probe_ttl_s`."""
        token = uuid.uuid4().hex
        with _guard():
            taken = self._r.set(self._k(name, "probe"), token, nx=True, px=self.probe_ttl_ms)
        return token if taken else None

    def release_probe(self, name: str, token: str) -> None:
        """The probe is over (whatever came of it): the next call may probe again."""
        with _guard():
            self._release(keys=[self._k(name, "probe")], args=[token])

    def succeeded(self, name: str) -> None:
        """An answer: the failures in a row, and a pending opening's growth, are forgotten."""
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k(name, "fails"))
        pipe.delete(self._k(name, "opens"))
        with _guard():
            _, closed = pipe.execute()
        if closed:
            log.info("provider %s: circuit closed, it answered", name, extra={"provider": name})

    def disable(self, name: str, reason: str) -> None:
        """Auth or billing failure: a long cooldown and one loud line (the key is never named)."""
        if self._set(name, CooldownKind.DISABLED, self.auth_disable_ms, reason):
            log.error("provider %s disabled for %d s: %s — check its API key / billing",
                      name, self.auth_disable_ms // 1000, reason)

    def clear(self, name: str) -> None:
        with _guard():
            self._r.delete(*(self._k(name, w) for w in ("until", "fails", "opens", "probe")))
