"""A silent provider: the first provider of a two-provider chain accepts every connection and
never answers (the fake in hang mode), the second is honest. What does each call pay for the
silence, while the circuit is closed and once it is open?

In process, the real path: one Router through the real SDKs over two fake providers (groq
flavour first, gemini second, no latency), its buckets and circuits on the benchmark Redis under
a key prefix of its own. In each run, `calls` calls one after the other with the silent provider
first in the chain, each after one call against the honest provider alone (the baseline; a
router of its own). A call's added latency is its wall time minus the baseline's median.
"Before": the calls that reached the silent provider (the ledger's first row a `timeout`);
"after": the calls that skipped it (its circuit open). Before this change a silent provider
cost LLM_TIMEOUT_S (60 s) per call, every time its circuit was closed.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from bench import harness as H
from testkit.fake_provider import FakeProvider

IDEA = "a marketplace for used lab equipment"


def _router(silent: FakeProvider | None, honest: FakeProvider, env: dict[str, str],
            prefix: str) -> Any:
    from masterplan.llm.registry import build_router

    chain = (["groq"] if silent else []) + ["google"]
    base = {"LLM_PROVIDERS": ",".join(chain), "REDIS_KEY_PREFIX": prefix,
            "GOOGLE_BASE_URL": honest.url + "/v1beta/openai/", "GOOGLE_API_KEY": "sk-honest",
            "GOOGLE_TPM": "100000000", "GOOGLE_RPM": "1000000"}
    if silent is not None:
        base |= {"GROQ_BASE_URL": silent.openai_base_url, "GROQ_API_KEY": "sk-silent",
                 "GROQ_TPM": "100000000", "GROQ_RPM": "1000000"}
    return build_router(H.settings_for(base | env), H.ours_redis())


def _run(calls: int, env: dict[str, str]) -> dict[str, float]:
    from masterplan.llm.outcomes import CallOutcome
    from masterplan.personas import persona_request

    request = persona_request("market", IDEA, None)
    with FakeProvider(flavor="groq", api_key="sk-silent", hang_s=120) as silent, \
            FakeProvider(flavor="gemini", api_key="sk-honest") as honest:
        prefix = f"bench-silent-{uuid.uuid4().hex[:8]}"
        alone = _router(None, honest, env, prefix + "-alone")
        silent.set_mode("hang")
        router = _router(silent, honest, env, prefix)
        base: list[float] = []
        timed: list[tuple[bool, float]] = []
        try:
            alone.route(request)  # warm: connections, the Lua scripts, the schema
            # Interleaved, so that the machine's drift touches both alike.
            for _ in range(calls):
                t = time.perf_counter()
                alone.route(request)
                base.append(time.perf_counter() - t)
                t = time.perf_counter()
                routed = router.route(request)
                elapsed = time.perf_counter() - t
                assert routed.completion.provider == "google", routed.attempts
                timed.append((routed.attempts[0].outcome == CallOutcome.TIMEOUT, elapsed))
        finally:
            H.forget_keys(f"{prefix}-alone:")
            H.forget_keys(prefix + ":")
        baseline = statistics.median(base)
        before = [t - baseline for reached, t in timed if reached]
        after = [t - baseline for reached, t in timed if not reached]
        reached_fake = silent.count()
    return {
        "baseline_ms": baseline * 1000,
        "added_before_ms": statistics.median(before) * 1000 if before else float("nan"),
        "added_before_max_ms": max(before) * 1000 if before else float("nan"),
        "added_after_ms": statistics.median(after) * 1000 if after else float("nan"),
        "added_after_max_ms": max(after) * 1000 if after else float("nan"),
        "calls_paying": float(len(before)),
        "requests_to_silent": float(reached_fake),
    }


def measure_silent(*, calls: int, repeats: int, first_token_s: float,
                   circuit_failures: int = 3) -> dict[str, Any]:
    """`calls` sequential calls per run, `repeats` runs; the figures summarized across runs."""
    env = {"LLM_FIRST_TOKEN_TIMEOUT_S": str(first_token_s),
           "CIRCUIT_FAILURES": str(circuit_failures)}
    H.log(f"silent: {repeats} × {calls} calls, the first provider hanging, first-token timeout "
          f"{first_token_s:g} s")
    runs = H.repeat(repeats, lambda _i: _run(calls, env))
    from masterplan.settings import load_settings

    s = load_settings(env, env_file=None)
    out: dict[str, Any] = {k: H.summarize(v) for k, v in runs.items()}
    return out | {"calls": calls, "repeats": repeats, "first_token_s": s.llm_first_token_timeout_s,
                  "stall_s": s.llm_stall_timeout_s, "timeout_s": s.llm_timeout_s,
                  "circuit_failures": s.circuit_failures, "circuit_open_s": s.circuit_open_s}
