"""From configuration to live providers: one adapter per configured provider, in chain order."""

from __future__ import annotations

from typing import Any

from masterplan.llm.base import Provider
from masterplan.llm.cooldowns import Cooldowns
from masterplan.llm.router import Route, Router
from masterplan.llm.stub import StubProvider
from masterplan.ratelimit import BucketLimits, TokenBucketLimiter
from masterplan.settings import ProviderConfig, Settings


def build_provider(cfg: ProviderConfig, *, timeout_s: float) -> Provider:
    """SDK clients are built here, once per process, with the SDK's own retries off."""
    if cfg.kind == "stub":
        return StubProvider(cfg.name, cfg.model, latency_s=cfg.latency_ms / 1000)
    if cfg.kind == "anthropic":
        from masterplan.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(cfg.name, cfg.model, cfg.base_url, cfg.api_key, timeout_s=timeout_s)
    from masterplan.llm.openai_compat import OpenAICompatProvider

    return OpenAICompatProvider(cfg.name, cfg.model, cfg.base_url, cfg.api_key, timeout_s=timeout_s)


def bucket_limits(settings: Settings) -> dict[str, BucketLimits]:
    return {
        p.name: BucketLimits(
            tpm=p.tpm or 10**12, rpm=p.rpm or 10**9,
            burst_tokens=p.burst_tokens, burst_requests=p.burst_requests,
        )
        for p in settings.providers
        if p.tpm or p.rpm
    }


def build_router(settings: Settings, redis_client: Any) -> Router:
    routes = [Route(build_provider(p, timeout_s=settings.llm_timeout_s), p) for p in settings.providers]
    limiter = TokenBucketLimiter(redis_client, bucket_limits(settings),
                                 prefix=settings.redis_key_prefix)
    cooldowns = Cooldowns(
        redis_client,
        circuit_failures=settings.circuit_failures,
        circuit_open_s=settings.circuit_open_s,
        auth_disable_s=settings.auth_disable_s,
        prefix=settings.redis_key_prefix,
    )
    return Router(routes, limiter, cooldowns)
