"""The rate-limit benchmark: the seed's two approaches against our token bucket, on the same
fake provider (a separate process with a groq-like 6,000 TPM / 30 RPM bucket that answers 429
with real headers), plus the limiter's own cost against Redis PING.

Scenarios, each run three ways in one run:
- burst: one job whose five personas each need ~1,900 tokens (~9,500 at once). Reported:
  agents that succeeded, provider 429s, wall time until the last agent finished or gave up,
  tokens admitted as a share of what the limit allowed in that time (capacity + refill).
- sustained: three processes working through jobs back to back (5 personas, synthesis,
  critique; the idea without the founder's context, ~7,000 tokens a job) for a fixed window:
  the seed's processes run one job at a time each, back to back; ours gets nine jobs at once
  on three worker processes. A whole job needs more than a minute of a 6,000 TPM allowance,
  so few or no jobs finish inside the window; the share of the allowance used and the 429s
  are the figures that tell the ways apart. Reported: jobs
  completed in the window, successful calls, 429s, tokens admitted as a share of the
  allowance (capacity + TPM x window).

In each repeat the three ways run at the same time, each against its own fake provider
process (they share no limit), so the run takes as long as the slowest way.

"seed back-off": plain `openai` SDK clients (max_retries=0), five threads per job, 3 attempts
sleeping 4 s then 8 s after a 429. "seed gaps": the five calls one after another with 1.5 s
between them, no retry. "ours": the real pipeline (API + Celery workers, router, Redis bucket)
with LLM_PROVIDERS=groq pointed at the fake. All three use the pipeline's prompts.

A seed process is `python -m bench.ratelimit seed ...` (one JSON line per finished job).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from bench import harness as H

IDEA = "a marketplace for used lab equipment"
MODEL = "llama-3.1-8b-instant"
FAKE_KEY = "sk-bench-0123456789"
PERSONA_MAX_TOKENS = 400
SYNTHESIS_MAX_TOKENS = 600
CRITIQUE_MAX_TOKENS = 300
BACKOFF_S = (4.0, 8.0)
GAP_S = 1.5


def founder_context() -> dict[str, str]:
    """About 4,400 characters of interview answers: each persona prompt becomes ~1,500 tokens,
    which with max_tokens=400 makes ~1,900 tokens per persona call."""
    answers = {
        "customers": "University labs and biotech startups that buy centrifuges, incubators, "
                     "pipettes and microscopes; they replace equipment every 3-7 years and "
                     "surplus sits unused in storage rooms. ",
        "problem": "Buying used equipment today means eBay listings without service history, "
                   "brokers with 40% margins, and no way to verify calibration. ",
        "solution": "A marketplace with verified sellers, calibration certificates, escrow, "
                    "freight for fragile instruments and an optional 90-day warranty. ",
        "traction": "Ten interviews with lab managers; three agreed to list surplus; one "
                    "procurement office asked for invoicing on net-60 terms. ",
        "team": "Two founders: a former lab manager and a marketplace engineer. ",
        "competition": "eBay, LabX, regional brokers, university surplus auctions. ",
    }
    # Repeat each answer to reach the target size (interviews are long-winded).
    return {k: (v * 6).strip() for k, v in answers.items()}


# ------------------------------------------------------------------ limiter cost


def measure_limiter_cost(*, seconds: float, repeats: int) -> dict[str, Any]:
    """reserve + reconcile from one client against PING from the same client, interleaved."""
    import redis

    from masterplan.ratelimit import BucketLimits, TokenBucketLimiter
    from masterplan.ratelimit.limiter import MAX_LIMIT

    H.log(f"limiter cost: {repeats} x ({seconds:.0f} s PING, {seconds:.0f} s reserve+reconcile)")
    H.flush_redis(H.RATELIMIT_DB)
    client = redis.Redis.from_url(H.redis_url(H.RATELIMIT_DB))
    limiter = TokenBucketLimiter(client, {"bench": BucketLimits(tpm=MAX_LIMIT, rpm=MAX_LIMIT)})

    def pings() -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                client.ping()
            n += 100
        return n / (time.perf_counter() - t0)

    def pairs() -> float:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(100):
                d = limiter.reserve("bench", 1000)
                assert d.reservation is not None
                limiter.reconcile(d.reservation, 900)  # a refund: a real round trip
            n += 100
        return n / (time.perf_counter() - t0)

    pings()  # warm up (connection, script cache)
    pairs()
    per: dict[str, list[float]] = {"ping_per_s": [], "pairs_per_s": [], "ops_per_s": [],
                                   "pairs_over_ping": [], "ops_over_ping": []}
    for _ in range(repeats):
        p, q = pings(), pairs()
        per["ping_per_s"].append(p)
        per["pairs_per_s"].append(q)
        per["ops_per_s"].append(2 * q)
        per["pairs_over_ping"].append(q / p)
        per["ops_over_ping"].append(2 * q / p)
    client.close()
    return {"seconds": seconds, "repeats": repeats} | {k: H.summarize(v) for k, v in per.items()}


# ------------------------------------------------------------------ the seed's approaches


def _messages(req: Any) -> list[dict[str, str]]:
    return [{"role": "system", "content": req.system},
            *({"role": m.role, "content": m.content} for m in req.messages)]


class SeedClient:
    """One process's SDK client, with the seed's retry policy."""

    def __init__(self, base_url: str, style: str) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=FAKE_KEY, max_retries=0,
                                    timeout=60)
        self.style = style

    def call(self, req: Any) -> dict[str, Any] | None:
        """One call: the parsed JSON answer, or None when the seed gave up."""
        import openai

        attempts = 3 if self.style == "backoff" else 1
        for attempt in range(attempts):
            try:
                r = self.client.chat.completions.create(
                    model=MODEL, messages=_messages(req),  # type: ignore[arg-type]
                    max_tokens=req.max_tokens)
                return json.loads(r.choices[0].message.content or "null")
            except openai.RateLimitError:
                if attempt + 1 < attempts:
                    time.sleep(BACKOFF_S[attempt])
            except (openai.APIError, ValueError):
                return None
        return None

    def personas(self, idea: str, context: dict[str, Any] | None) -> dict[str, Any]:
        from masterplan.personas import PERSONA_KEYS, persona_request

        reqs = {k: persona_request(k, idea, context, max_tokens=PERSONA_MAX_TOKENS)
                for k in PERSONA_KEYS}
        out: dict[str, Any] = {}
        if self.style == "backoff":  # five agents at once, each retrying on its own
            threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, self.call(reqs[k])))
                       for k in reqs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:  # one after another, 1.5 s apart
            for i, k in enumerate(reqs):
                if i:
                    time.sleep(GAP_S)
                out[k] = self.call(reqs[k])
        return out

    def job(self, idea: str, context: dict[str, Any] | None, min_personas: int = 3) -> bool:
        from masterplan.personas import critique_request, synthesis_request

        findings = {k: v for k, v in self.personas(idea, context).items() if v is not None}
        if len(findings) < min_personas:
            return False
        plan = self.call(synthesis_request(idea, context, findings,
                                           max_tokens=SYNTHESIS_MAX_TOKENS))
        if plan is None:
            return False
        return self.call(critique_request(idea, plan, max_tokens=CRITIQUE_MAX_TOKENS)) is not None


def seed_main(argv: list[str]) -> int:
    """`python -m bench.ratelimit seed --url U --style S --duration D`: jobs back to back."""
    p = argparse.ArgumentParser(prog="python -m bench.ratelimit seed")
    p.add_argument("--url", required=True)
    p.add_argument("--style", choices=("backoff", "gaps"), required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--no-context", action="store_true", help="the idea only (smaller jobs)")
    a = p.parse_args(argv)
    client = SeedClient(a.url, a.style)
    end = time.monotonic() + a.duration
    context = None if a.no_context else founder_context()
    print("READY", flush=True)
    while time.monotonic() < end:
        ok = client.job(IDEA, context)
        print(json.dumps({"done": time.time(), "ok": ok}), flush=True)
    return 0


# ------------------------------------------------------------------ the fake provider


@dataclass
class Limits:
    tpm: int = 6000
    rpm: int = 30
    burst_tokens: int | None = None  # None: one minute's worth (the fake's and our default)
    burst_requests: int | None = None

    @property
    def token_capacity(self) -> int:
        return self.burst_tokens or self.tpm

    def allowance(self, seconds: float) -> float:
        """The most a client could be admitted in `seconds` from a full bucket."""
        return self.token_capacity + self.tpm * seconds / 60

    def fake_args(self) -> list[str]:
        args = ["--flavor", "groq", "--api-key", FAKE_KEY, "--tpm", str(self.tpm),
                "--rpm", str(self.rpm)]
        if self.burst_tokens:
            args += ["--burst-tokens", str(self.burst_tokens)]
        if self.burst_requests:
            args += ["--burst-requests", str(self.burst_requests)]
        return args

    def env(self) -> dict[str, str]:
        env = {"GROQ_TPM": str(self.tpm), "GROQ_RPM": str(self.rpm)}
        if self.burst_tokens:
            env["GROQ_BURST_TOKENS"] = str(self.burst_tokens)
        if self.burst_requests:
            env["GROQ_BURST_REQUESTS"] = str(self.burst_requests)
        return env


def fake_stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_fake/stats", timeout=10).json()


def _count(stats: dict[str, Any], status: str) -> int:
    return int(stats.get("by_status", {}).get(status, 0))


def _count_429(stats: dict[str, Any]) -> int:
    return _count(stats, "429")


# ------------------------------------------------------------------ ours


@contextmanager
def ours_stack(fake_url: str, limits: Limits, *, workers: int, concurrency: int,
               pool: str, extra: dict[str, str] | None = None) -> Iterator[tuple[str, Any, Any]]:
    """API + `workers` worker processes, LLM_PROVIDERS=groq pointed at the fake; `extra` adds
    to (or overrides) their environment.

    Yields (API base URL, runtime for reading the database, the Celery app for pings)."""
    from masterplan.runtime import build_runtime

    H.flush_redis(H.RATELIMIT_DB)
    with H.fresh_database("mp_bench_rl") as db:
        env = {"REDIS_URL": H.redis_url(H.RATELIMIT_DB), "DATABASE_URL": db,
               "API_KEYS": H.API_KEY, "LLM_PROVIDERS": "groq",
               "GROQ_BASE_URL": f"{fake_url}/v1", "GROQ_API_KEY": FAKE_KEY,
               "PERSONA_MAX_TOKENS": str(PERSONA_MAX_TOKENS),
               "SYNTHESIS_MAX_TOKENS": str(SYNTHESIS_MAX_TOKENS),
               "CRITIQUE_MAX_TOKENS": str(CRITIQUE_MAX_TOKENS), **limits.env(), **(extra or {})}
        settings = H.settings_for(env)
        rt = build_runtime(H.settings_for({**env, "LOG_LEVEL": "WARNING"}))
        probe = _probe_app(settings)
        try:
            with H.api_process(env, name="api-rl") as base, \
                    H.workers("workers", env, probe=probe, pool=pool, concurrency=concurrency,
                              name="ours-rl", count=workers):
                yield base, rt, probe
        finally:
            probe.close()
            rt.close()


def _probe_app(settings: Any) -> Any:
    """A Celery app with the workers' configuration, only to ping them."""
    from celery import Celery

    from bench.raw_celery import celery_config

    app = Celery("probe")
    app.conf.update(celery_config(settings))
    return app


def _submit(base: str, context: dict[str, Any] | None) -> str:
    r = httpx.post(f"{base}/v1/jobs", json={"idea": IDEA, "context": context}, headers=H.AUTH,
                   timeout=30)
    if r.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs: {r.status_code} {r.text[:300]}")
    return str(r.json()["id"])


def _persona_state(rt: Any, job_id: str) -> tuple[int, int, float | None]:
    """(finished personas, succeeded personas, last finished_at epoch)."""
    import sqlalchemy as sa

    stmt = sa.text("SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed')), "
                   "count(*) FILTER (WHERE status = 'succeeded'), max(finished_at) "
                   "FROM stage_runs WHERE job_id = :id AND stage IN "
                   "('market', 'technical', 'finance', 'risk', 'growth')")
    with rt.engine.connect() as c:
        done, ok, last = c.execute(stmt, {"id": job_id}).one()
    return int(done), int(ok), (last.timestamp() if last else None)


# ------------------------------------------------------------------ burst


def _burst_seed(style: str, limits: Limits, timeout: float) -> dict[str, float]:
    with H.fake_provider_process(*limits.fake_args(), name=f"fake-burst-{style}") as url:
        client = SeedClient(f"{url}/v1", style)
        t0 = time.time()
        out = client.personas(IDEA, founder_context())
        wall = time.time() - t0
        stats = fake_stats(url)
    ok = sum(v is not None for v in out.values())
    return {"agents_ok": ok, "jobs_completed": float(ok == 5), "http_429": _count_429(stats),
            "wall_s": wall, "tokens_admitted": stats["tokens_admitted"],
            "share_of_allowance": stats["tokens_admitted"] / limits.allowance(wall)}


def _burst_ours(limits: Limits, timeout: float, pool: str) -> dict[str, float]:
    with H.fake_provider_process(*limits.fake_args(), name="fake-burst-ours") as url, \
            ours_stack(url, limits, workers=1, concurrency=8, pool=pool) as (base, rt, _app):
        t0 = time.time()
        job_id = _submit(base, founder_context())
        deadline = time.monotonic() + timeout
        while True:
            done, ok, last = _persona_state(rt, job_id)
            if done == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        wall = (last or time.time()) - t0
        stats = fake_stats(url)
    return {"agents_ok": ok, "jobs_completed": float(ok == 5), "http_429": _count_429(stats),
            "wall_s": wall, "tokens_admitted": stats["tokens_admitted"],
            "share_of_allowance": stats["tokens_admitted"] / limits.allowance(wall)}


def measure_burst(*, repeats: int, limits: Limits, pool: str, timeout: float = 120) -> dict[str, Any]:
    H.log(f"rate limit, burst: 5 x ~1,900 tokens at once against {limits.tpm} TPM "
          f"(capacity {limits.token_capacity}), {repeats} repeats")
    runs: dict[str, list[dict[str, float]]] = {"seed_backoff": [], "seed_gaps": [], "ours": []}
    for i in range(repeats):
        # The three ways at once, each against its own fake provider process.
        for way, r in _at_once({
            "seed_backoff": lambda: _burst_seed("backoff", limits, timeout),
            "seed_gaps": lambda: _burst_seed("gaps", limits, timeout),
            "ours": lambda: _burst_ours(limits, timeout, pool),
        }).items():
            runs[way].append(r)
        H.log(f"  run {i + 1}: " + "; ".join(
            f"{k} {v[-1]['agents_ok']:.0f}/5 ok, {v[-1]['http_429']:.0f} x 429, "
            f"{v[-1]['wall_s']:.1f} s" for k, v in runs.items()))
    # The earliest all five can finish: the bucket's deficit refilled at TPM/60 per second.
    return {"repeats": repeats, "tpm": limits.tpm, "rpm": limits.rpm,
            "token_capacity": limits.token_capacity,
            "ways": {k: {m: H.summarize([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}}


# ------------------------------------------------------------------ sustained


def _sustained_seed(style: str, limits: Limits, window: float, processes: int) -> dict[str, float]:
    with H.fake_provider_process(*limits.fake_args(), name=f"fake-sus-{style}") as url:
        procs = [H.Proc([str(H.BIN / "python"), "-m", "bench.ratelimit", "seed", "--url",
                         f"{url}/v1", "--style", style, "--duration", str(window + 60),
                         "--no-context"],
                        H.clean_env(), H.LOG_DIR / f"seed-{style}-{i}.log")
                 for i in range(processes)]
        try:
            for p in procs:
                p.wait_for_text("READY", timeout=60)
            t0 = time.time()
            time.sleep(window)
            stats = fake_stats(url)
            t1 = time.time()
        finally:
            for p in procs:
                p.stop()
        jobs = 0
        for p in procs:
            for line in p.output().splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    jobs += int(rec["ok"] and rec["done"] <= t1)
    return {"jobs_completed": jobs, "calls_ok": _count(stats, "200"),
            "http_429": _count_429(stats),
            "tokens_admitted": stats["tokens_admitted"], "wall_s": t1 - t0,
            "share_of_allowance": stats["tokens_admitted"] / limits.allowance(t1 - t0)}


def _sustained_ours(limits: Limits, window: float, processes: int, jobs: int,
                    pool: str) -> dict[str, float]:
    """`jobs` jobs sent at once to `processes` worker processes; counted at the window's end."""
    import sqlalchemy as sa

    with H.fake_provider_process(*limits.fake_args(), name="fake-sus-ours") as url, \
            ours_stack(url, limits, workers=processes, concurrency=4, pool=pool) as (base, rt, _):
        t0 = time.time()
        ids = [_submit(base, None) for _ in range(jobs)]
        time.sleep(max(0.0, window - (time.time() - t0)))
        stats = fake_stats(url)
        t1 = time.time()
        with rt.engine.connect() as c:
            done = c.execute(sa.text(
                "SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status = 'succeeded' "
                "AND finished_at <= to_timestamp(:t1)"), {"ids": ids, "t1": t1}).scalar()
    return {"jobs_completed": float(done or 0), "calls_ok": _count(stats, "200"),
            "http_429": _count_429(stats),
            "tokens_admitted": stats["tokens_admitted"], "wall_s": t1 - t0,
            "share_of_allowance": stats["tokens_admitted"] / limits.allowance(t1 - t0)}


def measure_sustained(*, repeats: int, window: float, limits: Limits, pool: str,
                      processes: int = 3, jobs: int = 9) -> dict[str, Any]:
    H.log(f"rate limit, sustained: {processes} processes, {window:.0f} s windows against "
          f"{limits.tpm} TPM, {repeats} repeats")
    runs: dict[str, list[dict[str, float]]] = {"seed_backoff": [], "seed_gaps": [], "ours": []}
    for i in range(repeats):
        for way, r in _at_once({
            "seed_backoff": lambda: _sustained_seed("backoff", limits, window, processes),
            "seed_gaps": lambda: _sustained_seed("gaps", limits, window, processes),
            "ours": lambda: _sustained_ours(limits, window, processes, jobs, pool),
        }).items():
            runs[way].append(r)
        H.log(f"  run {i + 1}: " + "; ".join(
            f"{k} {v[-1]['jobs_completed']:.0f} jobs, {v[-1]['http_429']:.0f} x 429, "
            f"share {v[-1]['share_of_allowance']:.2f}" for k, v in runs.items()))
    return {"repeats": repeats, "window_s": window, "processes": processes, "ours_jobs": jobs,
            "tpm": limits.tpm,
            "rpm": limits.rpm, "token_capacity": limits.token_capacity,
            "ways": {k: {m: H.summarize([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}}


def _at_once(fns: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Run each way in its own thread (they share nothing: one fake provider each)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(fns)) as ex:
        futures = {k: ex.submit(fn) for k, fn in fns.items()}
        return {k: f.result() for k, f in futures.items()}


def burst_bound_s(limits: Limits, per_call: int = 1900, calls: int = 5) -> float:
    """The earliest the last of `calls` simultaneous calls can be admitted."""
    need = per_call * calls - limits.token_capacity
    return max(0.0, need / (limits.tpm / 60))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "seed":
        raise SystemExit(seed_main(sys.argv[2:]))
    raise SystemExit("usage: python -m bench.ratelimit seed --url U --style backoff|gaps "
                     "--duration S   (the benchmark itself runs from `python -m bench`)")
