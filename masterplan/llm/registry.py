"""From configuration to live providers: one adapter per configured provider, in chain order."""

from __future__ import annotations

from typing import Any

from masterplan.llm.base import Provider
from masterplan.llm.cooldowns import Cooldowns
from masterplan.llm.router import Route, Router
from masterplan.llm.structured import ModeMemory
from masterplan.llm.stub import StubProvider
from masterplan.ratelimit import BucketLimits, TokenBucketLimiter
from masterplan.ratelimit.limiter import MAX_LIMIT
from masterplan.settings import ProviderConfig, Settings


def build_provider(cfg: ProviderConfig, *, timeout_s: float, first_token_s: float | None = None,
                   stall_s: float | None = None) -> Provider:
    """SDK clients are built here, once per process, with the SDK's own retries off."""
    if cfg.kind == "stub":
        return StubProvider(cfg.name, cfg.model, latency_s=cfg.latency_ms / 1000)
    if cfg.kind == "anthropic":
        from masterplan.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(cfg.name, cfg.model, cfg.base_url, cfg.api_key, timeout_s=timeout_s,
                                 first_token_s=first_token_s, stall_s=stall_s,
                                 structured_output=cfg.structured_output)
    from masterplan.llm.openai_compat import OpenAICompatProvider

    return OpenAICompatProvider(cfg.name, cfg.model, cfg.base_url, cfg.api_key, timeout_s=timeout_s,
                                first_token_s=first_token_s, stall_s=stall_s,
                                structured_output=cfg.structured_output, strict=cfg.schema_strict)


def bucket_limits(settings: Settings) -> dict[str, BucketLimits]:
    """The buckets of every provider with a limit; a limit left unset is as large as allowed."""
    return {
        p.name: BucketLimits(
            tpm=p.tpm or MAX_LIMIT, rpm=p.rpm or MAX_LIMIT,
            burst_tokens=p.burst_tokens, burst_requests=p.burst_requests,
            tpd=p.tpd, rpd=p.rpd, day_reset=p.day_reset, counts=p.limit_counts,
        )
        for p in settings.providers
        if p.tpm or p.rpm or p.tpd or p.rpd
    }


def build_router(settings: Settings, redis_client: Any) -> Router:
    routes = [Route(build_provider(p, timeout_s=settings.llm_timeout_s,
                                   first_token_s=settings.llm_first_token_timeout_s,
                                   stall_s=settings.llm_stall_timeout_s), p)
              for p in settings.providers]
    limiter = TokenBucketLimiter(redis_client, bucket_limits(settings),
                                 prefix=settings.redis_key_prefix)
    cooldowns = Cooldowns(
        redis_client,
        circuit_failures=settings.circuit_failures,
        circuit_open_s=settings.circuit_open_s,
        circuit_max_open_s=settings.circuit_max_open_s,
        # The one probe of a half-open circuit is free again after one call's time at most.
        probe_ttl_s=settings.llm_timeout_s,
        auth_disable_s=settings.auth_disable_s,
        prefix=settings.redis_key_prefix,
    )
    modes = ModeMemory(redis_client, prefix=settings.redis_key_prefix)
    return Router(routes, limiter, cooldowns, modes=modes)
