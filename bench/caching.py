"""Prompt caching: what one job costs with a long founder context (~16,000 tokens), with the
providers' prompt caches and without, against an Anthropic-flavoured and an OpenAI-flavoured
fake (the fake's `prompt_cache` on or off; testkit/fake_cache.py says what each API reports).

In process, the real path: one Router through the real SDKs over one fake, its buckets on the
benchmark Redis under a key prefix of its own; a job's seven requests as the pipeline builds
them (masterplan/personas.py): the five personas one after the other (the pipeline runs them at
once; one after the other is how a provider's cache sees them once the first has been written),
the synthesis over their findings, then the critique. Its cost is the ledger's: the sum of the
attempts' `cost_usd` at the providers' default prices (KNOWN_PROVIDERS, cached and cache-write
rates included). A fresh fake (an empty cache) for every run.
"""

from __future__ import annotations

import uuid
from typing import Any

from bench import harness as H
from testkit.fake_provider import FakeProvider

IDEA = "a marketplace for used lab equipment"
FLAVORS = ("anthropic", "openai")


def long_context(tokens: int) -> dict[str, Any]:
    """A founder's context of about `tokens` tokens (four characters a token)."""
    para = ("Our lab customers buy refurbished centrifuges, pipettes and incubators; procurement "
            "takes six weeks, budgets reset each July, and service contracts matter more than "
            "list price. ")
    per_note = para * 8
    n = max(1, tokens * 4 // (len(per_note) + 20))
    return {f"note_{i:03d}": per_note for i in range(n)}


def _job_cost(flavor: str, cache: bool, context: dict[str, Any]) -> dict[str, float]:
    from masterplan.llm.registry import build_router
    from masterplan.personas import (
        PERSONA_KEYS,
        critique_request,
        persona_request,
        synthesis_request,
    )

    with FakeProvider(flavor=flavor, api_key="sk-bench", prompt_cache=cache) as fake:  # type: ignore[arg-type]
        prefix = f"bench-caching-{uuid.uuid4().hex[:8]}"
        name = flavor.upper()
        base = fake.anthropic_base_url if flavor == "anthropic" else fake.openai_base_url
        env = {"LLM_PROVIDERS": flavor, "REDIS_KEY_PREFIX": prefix, f"{name}_BASE_URL": base,
               f"{name}_API_KEY": "sk-bench", f"{name}_TPM": "100000000",
               f"{name}_RPM": "1000000"}
        router = build_router(H.settings_for(env), H.ours_redis())
        attempts: list[Any] = []
        try:
            findings: dict[str, dict[str, Any]] = {}
            for key in PERSONA_KEYS:
                routed = router.route(persona_request(key, IDEA, context))
                attempts += routed.attempts
                assert routed.completion.data is not None
                findings[key] = routed.completion.data.model_dump(mode="json")
            routed = router.route(synthesis_request(IDEA, context, findings))
            attempts += routed.attempts
            assert routed.completion.data is not None
            plan = routed.completion.data.model_dump(mode="json")
            attempts += router.route(critique_request(IDEA, plan)).attempts
        finally:
            H.forget_keys(prefix + ":")
    return {"cost_usd": sum(a.cost_usd for a in attempts),
            "input_tokens": float(sum(a.input_tokens for a in attempts)),
            "cached_input_tokens": float(sum(a.cached_input_tokens for a in attempts)),
            "cache_write_tokens": float(sum(a.cache_write_tokens for a in attempts))}


def measure_caching(*, context_tokens: int, repeats: int) -> dict[str, Any]:
    """Per flavour: one job's cost with and without the cache, and their ratio, over runs."""
    context = long_context(context_tokens)
    H.log(f"caching: {repeats} × one job per flavour ({', '.join(FLAVORS)}), context "
          f"~{context_tokens:,} tokens, cache on and off")
    out: dict[str, Any] = {"context_tokens": context_tokens, "repeats": repeats}
    for flavor in FLAVORS:
        def run(_i: int, flavor: str = flavor) -> dict[str, float]:
            on, off = _job_cost(flavor, True, context), _job_cost(flavor, False, context)
            return {"cost_cached_usd": on["cost_usd"], "cost_uncached_usd": off["cost_usd"],
                    "ratio": on["cost_usd"] / off["cost_usd"],
                    "input_tokens": on["input_tokens"],
                    "cached_input_tokens": on["cached_input_tokens"],
                    "cache_write_tokens": on["cache_write_tokens"]}
        out[flavor] = {k: H.summarize(v) for k, v in H.repeat(repeats, run).items()}
    return out
