"""Done means: the five personas of a job share their prefix (the idea and the context), the
provider's prompt cache serves it to the personas after the first, and the ledger and the
job's usage say so and price those tokens at the cached rate (real SDKs against the fake)."""

from __future__ import annotations

import pytest

from masterplan.personas import PERSONA_KEYS
from testkit.fake_provider import FakeProvider
from tests.integration.conftest import fake_env

# A context long enough for the caches' 1024-token minimum (the fake: 4 characters a token).
CONTEXT = {"notes": "We sell refurbished centrifuges and pipettes to university labs. " * 120}
PRICES = {"anthropic": dict(price_in="3.0", price_out="15.0", price_cached_in="0.3",
                            price_cache_write="3.75"),
          "openai": dict(price_in="2.0", price_out="8.0", price_cached_in="1.0")}


@pytest.mark.parametrize("flavor", ["anthropic", "openai"])
def test_the_personas_after_the_first_read_the_shared_prefix_from_the_cache(
        make_stack, flavor: str) -> None:
    with FakeProvider(flavor=flavor, api_key="sk-c") as fake:  # type: ignore[arg-type]
        env = {**fake_env(flavor, fake, kind=flavor, **PRICES[flavor]), "LLM_PROVIDERS": flavor}
        stack = make_stack(env)

        job = stack.wait(stack.submit(context=CONTEXT))

        assert job["status"] == "succeeded"
        personas = [c for c in stack.calls(job["id"]) if c.stage in PERSONA_KEYS]
        assert len(personas) == 5 and {c.outcome for c in personas} == {"ok"}
        reading = [c for c in personas if c.cached_input_tokens]
        # The first persona to arrive finds nothing; the four others find the shared prefix.
        assert len(reading) == 4
        assert all(1024 <= c.cached_input_tokens < c.input_tokens for c in reading)
        writes = [c for c in personas if c.cache_write_tokens]
        if flavor == "anthropic":
            # The marked system block, written once, at 1.25x the input price.
            assert len(writes) == 1 and writes[0] not in reading
        else:
            assert not writes  # OpenAI's cache is implicit: no writes, no surcharge
            assert all(c.cached_input_tokens % 128 == 0 for c in reading)
        cfg = stack.settings.providers[0]
        for c in personas:
            assert c.cost_usd == pytest.approx(cfg.cost_usd(
                c.input_tokens, c.output_tokens, cached_input_tokens=c.cached_input_tokens,
                cache_write_tokens=c.cache_write_tokens))
        second = reading[0]
        p = PRICES[flavor]
        fresh = second.input_tokens - second.cached_input_tokens
        assert second.cost_usd == pytest.approx((
            fresh * float(p["price_in"]) + second.cached_input_tokens * float(p["price_cached_in"])
            + second.output_tokens * float(p["price_out"])) / 1e6)
        assert second.cost_usd < cfg.cost_usd(second.input_tokens, second.output_tokens)

        usage = job["usage"]
        by_stage = {u["stage"]: u for u in usage["by_stage"]}
        assert sum(by_stage[k]["cached_input_tokens"] for k in PERSONA_KEYS) == sum(
            c.cached_input_tokens for c in personas) == usage["totals"]["cached_input_tokens"]
        assert usage["totals"]["cache_write_tokens"] == sum(c.cache_write_tokens for c in writes)
        assert by_stage[second.stage]["cost_usd"] == pytest.approx(second.cost_usd, abs=1e-6)
