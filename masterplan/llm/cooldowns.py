"""Shared provider cooldowns in Redis, seen by every worker on every machine.

A cooldown is a key with a TTL: no clock is read anywhere, so workers' clocks cannot disagree.
- 429 / overloaded: cool down for the provider's own retry-after; a longer wait extends the
  cooldown, a shorter one never shortens it (one Lua call compares PTTLs).
- N consecutive server errors or timeouts open the circuit for `circuit_open_s`.
- Auth and billing errors disable the provider for `auth_disable_s`.

Redis unreachable (down, loading, read-only, ...): every method raises `LimiterUnavailable`, the
same error and the same test of "unreachable" as the rate limiter, so the router has one thing
to handle.
"""

from __future__ import annotations

import logging
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


class CooldownKind(StrEnum):
    RATE_LIMITED = "rate_limited"  # transient: worth waiting for
    CIRCUIT_OPEN = "circuit_open"  # transient
    DISABLED = "disabled"  # auth or billing: not worth waiting for within a job


@dataclass(frozen=True)
class ProviderState:
    name: str
    cooling_ms: int  # 0 when not cooling down
    kind: CooldownKind | None
    reason: str | None
    failures: int  # consecutive server errors / timeouts

    @property
    def available(self) -> bool:
        return self.cooling_ms <= 0


def _key(prefix: str, name: str, what: str) -> str:
    return f"{prefix}:cd:{{{name}}}:{what}"


def _guard() -> AbstractContextManager[None]:
    return unavailable_as_limiter_error("provider cooldowns")


class Cooldowns:
    def __init__(
        self,
        client: Any,
        *,
        circuit_failures: int = 3,
        circuit_open_s: int = 30,
        auth_disable_s: int = 3600,
        prefix: str = "mp",
    ) -> None:
        self._r = client
        self._extend = client.register_script(_EXTEND)
        self.circuit_failures = circuit_failures
        self.circuit_open_ms = circuit_open_s * 1000
        self.auth_disable_ms = auth_disable_s * 1000
        self._prefix = prefix

    def snapshot(self, names: list[str]) -> dict[str, ProviderState]:
        """Every provider's state in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for n in names:
            pipe.pttl(_key(self._prefix, n, "until"))
            pipe.get(_key(self._prefix, n, "until"))
            pipe.get(_key(self._prefix, n, "fails"))
        with _guard():
            raw = pipe.execute()
        states = {}
        for i, n in enumerate(names):
            ttl, value, fails = raw[3 * i : 3 * i + 3]
            kind = reason = None
            if value is not None and ttl > 0:
                text = value.decode() if isinstance(value, bytes) else str(value)
                k, _, reason = text.partition(":")
                kind = CooldownKind(k)
            states[n] = ProviderState(
                n, max(0, int(ttl)) if kind else 0, kind, reason, int(fails or 0)
            )
        return states

    def _set(self, name: str, kind: CooldownKind, ms: int, reason: str) -> bool:
        with _guard():
            done = self._extend(
                keys=[_key(self._prefix, name, "until")], args=[max(1, ms), f"{kind}:{reason}"]
            )
        return bool(done)

    def rate_limited(self, name: str, wait_ms: int, reason: str) -> None:
        self._set(name, CooldownKind.RATE_LIMITED, wait_ms, reason)

    def failed(self, name: str, reason: str) -> bool:
        """Count a server error or timeout; returns True when this one opened the circuit."""
        key = _key(self._prefix, name, "fails")
        with _guard():
            pipe = self._r.pipeline(transaction=True)
            pipe.incr(key)
            pipe.pexpire(key, self.circuit_open_ms * 4)
            count = pipe.execute()[0]
        if count >= self.circuit_failures:
            with _guard():
                self._r.delete(key)
            opened = self._set(
                name, CooldownKind.CIRCUIT_OPEN, self.circuit_open_ms,
                f"{count} consecutive failures, last: {reason}",
            )
            if opened:
                log.warning("provider %s: circuit open for %d s after %d consecutive failures (%s)",
                            name, self.circuit_open_ms // 1000, count, reason)
            return opened
        return False

    def succeeded(self, name: str) -> None:
        with _guard():
            self._r.delete(_key(self._prefix, name, "fails"))

    def disable(self, name: str, reason: str) -> None:
        """Auth or billing failure: a long cooldown and one loud line (the key is never named)."""
        if self._set(name, CooldownKind.DISABLED, self.auth_disable_ms, reason):
            log.error("provider %s disabled for %d s: %s — check its API key / billing",
                      name, self.auth_disable_ms // 1000, reason)

    def clear(self, name: str) -> None:
        with _guard():
            self._r.delete(_key(self._prefix, name, "until"), _key(self._prefix, name, "fails"))
