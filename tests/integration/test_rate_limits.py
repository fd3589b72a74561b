"""The token bucket in the whole system, on real Redis: no 429s, and the limits used in full."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from testkit.fake_provider import FakeProvider
from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http
from tests.conftest import _redis_url, fresh_pg_database
from tests.integration.conftest import Stack

# ~4,400 characters of founder context: with PERSONA_MAX_TOKENS=400 every persona reserves
# ~1,900 tokens and really uses ~1,800, as in the seed's burst (5 x 1,900 against 6,000 TPM).
CONTEXT = {"interview": " ".join(f"answer {i}: we sell refurbished centrifuges to labs." for i in range(85))}
SEED_ENV = {"PERSONA_MAX_TOKENS": "400", "SYNTHESIS_MAX_TOKENS": "600", "CRITIQUE_MAX_TOKENS": "300"}


def groq_env(fake: FakeProvider, tpm: int, rpm: int) -> dict[str, str]:
    return {"GROQ_BASE_URL": fake.openai_base_url, "GROQ_API_KEY": "sk-q", "GROQ_TPM": str(tpm),
            "GROQ_RPM": str(rpm)}


def earliest_finish_s(calls: list, capacity: int, per_s: float) -> float:
    """No scheme finishes before the bucket has refilled what the job used beyond its capacity,
    the last call needing its whole reservation (prompt + max_tokens) at admission."""
    ok = [c for c in calls if c.outcome == "ok"]
    last = max(ok, key=lambda c: c.created_at)
    used_before = sum(c.input_tokens + c.output_tokens for c in ok if c is not last)
    last_reserved = last.input_tokens + int(SEED_ENV["CRITIQUE_MAX_TOKENS"])
    return max(0.0, (used_before + last_reserved - capacity) / per_s)


def test_the_seed_burst_gets_no_429_and_finishes_when_the_bucket_allows(make_stack) -> None:
    with FakeProvider(flavor="groq", api_key="sk-q", tpm=6000, rpm=30) as fake:
        stack: Stack = make_stack({"LLM_PROVIDERS": "groq", **groq_env(fake, 6000, 30), **SEED_ENV})
        job_id = stack.submit(context=CONTEXT)
        job = stack.wait(job_id, timeout=240)

        assert job["status"] == "succeeded", job["error"]
        assert all(p["status"] == "succeeded" for p in job["personas"])
        assert fake.count(429) == 0
        calls = stack.calls(job_id)
        persona_ok = [c for c in calls if c.outcome == "ok" and c.stage not in ("synthesis", "critique")]
        assert all(1700 <= c.input_tokens + c.output_tokens <= 2000 for c in persona_ok)
        from datetime import datetime

        took = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
                ).total_seconds()
        bound = earliest_finish_s(calls, 6000, 100.0)
        assert bound > 30  # the burst really had to wait for the bucket
        assert took <= 1.10 * bound, (took, bound)
        assert job["usage"]["totals"]["wait_ms"] > 0  # the waits are visible in the job's usage
        # The ledger grows with calls, not with every look at a chain that must still wait: one
        # `deferred` row (and one set of skips) per stage's waiting episode, the waits summed.
        from collections import Counter

        deferred = Counter(c.stage for c in calls if c.outcome == "deferred")
        assert deferred and max(deferred.values()) == 1, deferred
        skips = Counter(c.stage for c in calls if c.outcome == "skipped_ratelimit")
        assert max(skips.values()) == 1, skips
        waited = {c.stage: c.wait_ms for c in calls if c.outcome == "deferred"}
        by_stage = {u["stage"]: u["wait_ms"] for u in job["usage"]["by_stage"]}
        assert all(by_stage[st] == w for st, w in waited.items())
        assert max(waited.values()) > 5000  # several waits folded into one row


def test_overflow_goes_to_a_provider_with_room_at_once(make_stack) -> None:
    with FakeProvider(flavor="groq", api_key="sk-q", tpm=6000, rpm=30) as groq, \
            FakeProvider(flavor="gemini", api_key="sk-g", tpm=1_000_000, rpm=1000) as google:
        env = {"LLM_PROVIDERS": "groq,google", **groq_env(groq, 6000, 30), **SEED_ENV,
               "GOOGLE_BASE_URL": google.url + "/v1beta/openai/", "GOOGLE_API_KEY": "sk-g",
               "GOOGLE_TPM": "1000000", "GOOGLE_RPM": "1000"}
        stack: Stack = make_stack(env)
        job = stack.wait(stack.submit(context=CONTEXT), timeout=60)

        assert job["status"] == "succeeded"
        assert groq.count(429) == 0 and google.count(429) == 0
        served = {p["provider"] for p in job["personas"]}
        assert served == {"groq", "google"}
        calls = stack.calls(job["id"])
        assert not [c for c in calls if c.outcome == "deferred"]  # nobody waited for a bucket
        assert job["usage"]["totals"]["wait_ms"] == 0
        spilled = [c for c in calls if c.provider == "google" and c.outcome == "ok"]
        assert spilled and all(c.fallback_from == "groq" for c in spilled)


def test_a_spent_day_moves_the_job_to_the_next_provider_without_a_429(make_stack) -> None:
    """Groq's day has room for three calls: the job's other four go to google at once, nobody
    collects a 429, and /v1/providers and /metrics say what is left of the day."""
    with FakeProvider(flavor="groq", api_key="sk-q", tpm=6000, rpm=30, rpd=3,
                      day_reset="rolling") as groq, \
            FakeProvider(flavor="gemini", api_key="sk-g", tpm=1_000_000, rpm=1000) as google:
        env = {"LLM_PROVIDERS": "groq,google", **groq_env(groq, 1_000_000, 1000), "GROQ_RPD": "3",
               "GOOGLE_BASE_URL": google.url + "/v1beta/openai/", "GOOGLE_API_KEY": "sk-g",
               "GOOGLE_TPM": "1000000", "GOOGLE_RPM": "1000", "METRICS_TOKEN": "rl-metrics-token"}
        stack: Stack = make_stack(env)
        job = stack.wait(stack.submit(), timeout=60)

        assert job["status"] == "succeeded", job["error"]
        assert groq.count(429) == 0 and google.count(429) == 0
        assert groq.count() == 3 and google.count() == 4  # 5 personas, synthesis, critique
        calls = stack.calls(job["id"])
        skipped = [c for c in calls if c.provider == "groq" and c.outcome == "skipped_ratelimit"]
        assert len(skipped) == 4 and all(c.wait_ms > 3_600_000 for c in skipped)  # hours away
        assert not [c for c in calls if c.outcome == "deferred"]  # google had room: no waiting

        from tests.integration.conftest import AUTH_A

        providers = {p["name"]: p for p in
                     stack.client.get("/v1/providers", headers=AUTH_A).json()["providers"]}
        day = providers["groq"]["bucket"]
        assert (day["requests_today"], day["request_day_capacity"]) == (0, 3)
        assert day["token_day_capacity"] == 500_000 and day["tokens_today"] < 500_000
        assert day["day_resets_at"] is not None and day["wait_ms"] > 3_600_000
        assert providers["google"]["bucket"]["requests_today"] == 1_500 - 4  # its default cap
        metrics = stack.client.get("/metrics", headers={"Authorization": "Bearer rl-metrics-token"})
        lines = metrics.text.splitlines()
        assert 'masterplan_bucket_day_remaining{bucket="requests",provider="groq"} 0.0' in lines
        assert 'masterplan_bucket_day_capacity{bucket="requests",provider="groq"} 3.0' in lines
        assert 'masterplan_metrics_source_up{source="limiter"} 1.0' in lines


@pytest.mark.parametrize("counts", ["actual", "reserved"])
def test_three_worker_processes_share_one_bucket(tmp_path: Path, redis_url: str, counts: str) -> None:
    """Demand above the limit from 3 processes: zero 429s and >= 95% of the allowance used,
    whether the provider settles what a call used or keeps the whole reservation (prompt +
    max_tokens, as OpenAI counts) and our buckets are told which (GROQ_LIMIT_COUNTS)."""

    tpm, window_s = 60_000, 35.0
    redis_db = _redis_url(11)
    with FakeProvider(flavor="groq", api_key="sk-q", tpm=tpm, rpm=100_000,
                      limit_counts=counts) as fake, \
            fresh_pg_database("mp_rl") as db_url:
        # A prefix of its own: the buckets, cooldowns and queues the other case left in Redis
        # (an empty bucket, to begin with) are not this one's.
        env = clean_env(REDIS_URL=redis_db, DATABASE_URL=db_url, API_KEYS="rl-key",
                        REDIS_KEY_PREFIX=f"mptest-rl-{uuid.uuid4().hex[:8]}",
                        LLM_PROVIDERS="groq", **groq_env(fake, tpm, 100_000),
                        GROQ_LIMIT_COUNTS=counts,
                        **(SEED_ENV | {"SYNTHESIS_MAX_TOKENS": "400", "CRITIQUE_MAX_TOKENS": "200"}))
        import subprocess

        subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        port = free_port()
        worker = [str(BIN / "celery"), "-A", "workers", "worker", "-P", "threads", "-c", "4", "-l", "INFO"]
        procs = [Proc([*worker, "--hostname", f"rl{i}@%h"], env, tmp_path / f"w{i}.log") for i in range(3)]
        api = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port)], env, tmp_path / "api.log")
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/readyz", proc=api)
            for p in procs:
                p.wait_for_text("ready.", timeout=60)
            headers = {"Authorization": "Bearer rl-key"}
            for i in range(40):  # ~40 x 5,000 tokens: far more than the window allows
                r = httpx.post(f"{base}/v1/jobs", json={"idea": f"idea {i}"}, headers=headers)
                assert r.status_code == 202
            while not fake.calls:
                time.sleep(0.05)
            t0 = fake.calls[0].at
            time.sleep(window_s + 1)
        finally:
            for p in procs:
                p.stop()
            api.stop()
    calls = fake.calls
    assert not [c for c in calls if c.status == 429]
    # What the provider charged: the tokens used, or (reserved) the prompt and all of max_tokens.
    admitted = sum(c.charged for c in calls if c.status == 200 and c.at <= t0 + window_s)
    allowed = tpm + tpm / 60 * window_s
    assert admitted >= 0.95 * allowed, (admitted, allowed)
