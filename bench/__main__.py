"""Benchmarks: `python -m bench` (or `make bench`) runs them all and writes the report.

    python -m bench                      # everything, ~25 min on 2 cores
    python -m bench --quick              # tiny counts, one run each, no sustained rate-limit
                                         # run, < 2 min (a smoke run)
    python -m bench --only throughput,latency
    python -m bench --out /tmp/bench     # write the report somewhere else
    python -m bench --only sustained --update   # re-run one part into the existing report

Names for --only: profile, throughput, latency, critical, concurrency, scaling, memory,
limiter, burst, sustained (those three are the rate-limit benchmark; `ratelimit` = all
three), streams, fairness, silent, caching, interview.

Needs PostgreSQL (BENCH_PG_ADMIN_URL, default postgresql://postgres@127.0.0.1:5432/postgres;
a fresh database is created and dropped for each measurement) and Redis (BENCH_REDIS_URL,
default redis://127.0.0.1:6379/0; the benchmarks use databases 8, 9 and 10 of that server and
flush them). Every process it needs (Celery workers, the API, the fake LLM provider, the
seed's client processes) is started here and stopped by its process group.

Output: bench/results/latest.md and bench/results/latest.json; a full run (no --quick, no
--only) also writes bench/RESULTS.md. Worker and API logs: bench/results/logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness as H
from bench import report

SECTIONS = ("profile", "throughput", "latency", "critical", "concurrency", "scaling", "memory",
            "limiter", "burst", "sustained", "streams", "fairness", "silent", "caching",
            "interview")

NOTES = [
    "Ours: `celery -A workers worker` processes, LLM_PROVIDERS=stub behind the token bucket "
    "(STUB_TPM/STUB_RPM far above the load, so every call runs the reserve/reconcile Lua "
    "script), Redis broker and result backend, a fresh PostgreSQL database per measurement "
    "(migrated to head), one ledger row per call. Raw: `celery -A bench.raw_celery worker`, "
    "the same `celery_config(...)` and flags, five no-op header tasks, three no-op tasks.",
    "Throughput: N jobs sent as fast as this process can, time from the first send to the "
    "last job finished (ours: max(jobs.finished_at) in PostgreSQL; raw: max(date_done) of the "
    "finalize results in Redis). Ours are created in the database first (not timed) and sent "
    "with `tasks.pipeline.enqueue` directly, not over HTTP, so the API is not the bottleneck. "
    "Worker CPU = user+system of the worker process trees; machine CPU = all processes "
    "(PostgreSQL, Redis and this process included).",
    "Latency: one job at a time on an otherwise idle worker, 50 ms apart; ours: from just "
    "before POST /v1/jobs (a uvicorn process) to the job's finished_at in PostgreSQL; raw: from "
    "just before apply_async to the finalize result's date_done in Redis (both are the "
    "system's own timestamps; completion is polled every 5 ms). Both use prefork -c 2.",
    "Critical path: the stub sleeps L per call; 3L = slowest persona + synthesis + critique. "
    "Measured like the latency, with a pool that runs the five personas at once.",
    "Concurrency: all jobs created and sent at once; calls in flight are computed from the "
    "ledger (each successful call is [created_at - latency_ms, created_at]); RSS is sampled "
    "every 0.25 s over the worker's process tree (parent and children). A run ends when every "
    "job is finished or the window closes (prefork cannot finish 200 jobs at L = 2 s: its "
    "jobs/s is jobs finished within the window). Bound = peak in flight / L / 7; a finite "
    "batch cannot reach it: the last jobs' synthesis and critique run with few calls left "
    "to overlap, so the 400-job run shows how the ratio approaches the bound as that tail "
    "is amortised. Utilization = mean / peak calls in flight.",
    "Scaling: like throughput with prefork -c 1, 2, 4 (one worker process per child).",
    "Memory: one worker process of the recommended pool; RSS of its process tree after "
    "each checkpoint (zero-latency stub), each batch sent at once and finished before "
    "sampling. The first batches grow the pool to its -c threads (each with its own Redis "
    "and database connection), a constant set by -c; the last interval is the leak check.",
    "Rate limit: the fake provider is a separate process (python -m "
    "testkit.fake_provider, flavour groq, exact Retry-After); 429s and tokens "
    "admitted come from its /_fake/stats. Share of allowance = tokens admitted / (bucket "
    "capacity + TPM × elapsed / 60). The seed's clients are the openai SDK with max_retries=0; "
    "ours is the API plus worker processes with LLM_PROVIDERS=groq pointed at the fake. "
    "The burst's wall time is until the last of the five agents finished or gave up.",
    "Limiter cost: one Python client (redis-py + hiredis), PING loop and reserve+reconcile "
    "loop interleaved in the same run; a pair is two round trips (reserve, then reconcile "
    "with a refund), ops = 2 × pairs.",
    "Event streams: one `uvicorn api.main:app` process (PostgreSQL, Redis, no worker, so the "
    "jobs stay queued); N sequential GET /healthz, then N sequential POST /v1/jobs from one "
    "keep-alive client, idle and then with the streams open (held by a helper process, asyncio "
    "+ httpx, one stream per queued job, opened 50 at a time), in each repeat; ratio = loaded / "
    "idle percentile of the same repeat. API CPU is sampled over 3 s with nothing but the open "
    "streams (the watcher's polling and the connections). Freed = from the helper's exit to "
    "GET /v1/streams reporting no stream and no watcher.",
    "Fair share: one fake provider process (groq flavour, 60,000 TPM / 600 RPM, 0.3 s per "
    "call; a job reserves about 8,000 tokens), the API and one worker process (threads -c 32), "
    "a fresh database per way. Key A POSTs the flood as fast as it can "
    "(KEY_SUBMISSIONS_PER_MIN off, so every job is stored); once the provider's bucket is below "
    "a tenth of its capacity, key B submits one job at a time, 15 s apart (the first finds the "
    "bucket drained by a single tenant; the later ones find the headroom). A job's time is "
    "finished_at - created_at from the API. Idle: B's job alone, the "
    "bucket refilled in between. Fair: the defaults (KEY_MAX_JOBS_IN_FLIGHT=8, "
    "FAIR_HEADROOM=0.2). First come first served: KEY_MAX_JOBS_IN_FLIGHT very high and "
    "FAIR_HEADROOM=0, as the system was before; a job not finished within the timeout counts "
    "as the timeout.",
    "Silent provider: in process, one Router through the real SDKs over two fake providers "
    "(groq flavour first, in hang mode: it accepts the connection and never answers; gemini "
    "second, honest, no latency), buckets and circuits on the benchmark Redis; N persona calls "
    "one after the other with the silent one first, each after one against the honest provider "
    "alone (the baseline, its own router), after one untimed warm-up call. Added = a call's "
    "wall time - the baseline's median; before = calls that reached the silent provider (their "
    "first ledger row a timeout), after = calls that skipped it (circuit open); "
    "CIRCUIT_FAILURES and CIRCUIT_OPEN_S at their defaults.",
    "Prompt caching: in process, one Router through the real SDKs over one fake provider per "
    "flavour (anthropic, openai), a job's seven requests as the pipeline builds them (the five "
    "personas one after the other, the synthesis, the critique) with a ~16,000-token founder "
    "context; its cost = the ledger's sum at the default prices (KNOWN_PROVIDERS), with the "
    "fake's prompt cache on and off (a fresh fake each run); ratio = cached / uncached.",
    "Interview (`bench/interview.py`): uvicorn API, a worker on the `interactive` queue "
    "(threads -c 8) and, behind a backlog, a batch worker on `personas,pipeline` (threads -c 32); "
    "the fake provider is a separate process (0.2 s before a reply begins, 8-character chunks "
    "5 ms apart) whose structured answer says `done: false`, so an interview goes on (four turns "
    "each, then a new one). TTFT = from just before the client sends POST "
    "/v1/interviews/{id}/turns to the first complete `token` event read by httpx; direct = the "
    "same fake through the `openai` SDK (stream=True, the turn's model, messages, max_tokens and "
    "temperature) to its first content delta, alternating with the system's; added = system "
    "percentile - direct percentile; first turns (POST /v1/interviews, then GET of its events "
    "URL) timed from the POST. Backlog: LLM_PROVIDERS=groq at 6,000 TPM (RPM 1,000), another "
    "key POSTs the jobs (KEY_SUBMISSIONS_PER_MIN off); once the bucket is below a job's persona "
    "call plus the kept share, a new interview every `every_s` (first-turn TTFT, each read in "
    "its own thread), with INTERACTIVE_SHARE at its default and at 0 (a fresh stack each); "
    "bucket and jobs sampled every 0.5 s; ratio = loaded / idle first-turn percentile. "
    "Structured: openai (faulty fake: "
    "a seeded 30% of replies cut, or every schema answered off-schema) then groq (healthy); "
    "one new interview per turn, repair and fallback counted from its `llm_calls` rows. "
    "Streams: interviews written to the database with their first turn `streaming` and no task "
    "published, one GET .../turns/1/events each from a helper process (asyncio + httpx, 50 "
    "opened at a time); GET /healthz, GET /v1/jobs, GET /v1/interviews/{id} sequential, idle "
    "then loaded; ratio = loaded / idle percentile.",
]


def _config(quick: bool) -> dict[str, Any]:
    from bench.ratelimit import Limits

    if quick:
        # Same shapes, tiny counts; the rate-limit bucket refills 4x faster (TPM 24,000 with a
        # 6,000-token capacity) so the 35 s burst bound becomes ~9 s. No sustained run.
        fast = Limits(tpm=24000, rpm=120, burst_tokens=6000, burst_requests=30)
        return {
            "profile": {"n_jobs": 20},
            "throughput": {"jobs": 30, "repeats": 1},
            "latency": {"jobs": 5, "repeats": 1},
            "critical": {"jobs": 3, "repeats": 1, "latency_ms": 200},
            "concurrency": {"repeats": 1, "latency_s": 0.5, "recommended": ("threads", 20),
                            "pools": (("prefork", 2, 1, 12, 3.0), ("threads", 20, 1, 12, 30.0))},
            "scaling": {"jobs": 20, "repeats": 1, "counts": (1, 2)},
            "memory": {"repeats": 1, "checkpoints": (10, 40)},
            "limiter": {"seconds": 0.5, "repeats": 1},
            "burst": {"repeats": 1, "limits": fast},
            "sustained": None,
            "streams": {"streams": 200, "jobs": 200, "requests": 100, "repeats": 1},
            "fairness": {"flood": 40, "repeats": 2, "timeout": 60},
            "silent": {"calls": 10, "repeats": 1, "first_token_s": 1.0},
            "caching": {"context_tokens": 4000, "repeats": 1},
            # A 4x faster bucket (24,000 TPM) so that the founder's pace fits the quick run.
            "interview": {"turns": 8, "backlog_jobs": 40, "backlog_every_s": 3.75,
                          "backlog_window_s": 11.25, "backlog_tpm": 24000, "backlog_rpm": 1000,
                          "structured_turns": 10, "streams": 100, "requests": 100},
        }
    return {
        "profile": {"n_jobs": 200},
        "throughput": {"jobs": 300, "repeats": 5},
        "latency": {"jobs": 40, "repeats": 3},
        "critical": {"jobs": 10, "repeats": 3, "latency_ms": 300},
        # (pool, -c, worker processes, jobs sent at once, window s)
        "concurrency": {"repeats": 2, "latency_s": 2.0, "recommended": ("threads", 100),
                        "pools": (("prefork", 2, 1, 200, 30.0), ("threads", 100, 1, 200, 150.0),
                                  ("threads", 200, 1, 200, 150.0), ("threads", 100, 2, 200, 150.0),
                                  ("gevent", 100, 1, 200, 90.0),
                                  ("threads", 100, 1, 400, 200.0))},
        "scaling": {"jobs": 200, "repeats": 2, "counts": (1, 2, 4)},
        "memory": {"repeats": 2, "checkpoints": (10, 1000, 1500)},
        "limiter": {"seconds": 2.0, "repeats": 5},
        "burst": {"repeats": 3, "limits": Limits()},
        "sustained": {"repeats": 2, "window": 90.0, "limits": Limits()},
        "streams": {"streams": 1000, "jobs": 1000, "requests": 300, "repeats": 3},
        "fairness": {"flood": 200, "repeats": 4, "timeout": 120},
        "silent": {"calls": 30, "repeats": 3, "first_token_s": 10.0},
        "caching": {"context_tokens": 16000, "repeats": 3},
        # (behind the backlog: a new interview every backlog_every_s for backlog_window_s)
        "interview": {"turns": 30, "backlog_jobs": 200, "backlog_every_s": 15.0,
                      "backlog_window_s": 120.0, "backlog_tpm": 6000, "backlog_rpm": 1000,
                      "structured_turns": 50, "streams": 500, "requests": 300},
    }


def _concurrency(cfg: dict[str, Any]) -> dict[str, Any]:
    from bench import pipeline as P

    out = P.measure_concurrency(repeats=cfg["repeats"], latency_s=cfg["latency_s"],
                                pools=cfg["pools"])
    pool, conc = cfg["recommended"]
    out["recommended"] = next(k for k, v in out["pools"].items()
                              if v["pool"] == pool and v["concurrency"] == conc
                              and v["processes"] == 1)
    return out


def run(sections: list[str], quick: bool) -> dict[str, Any]:
    from bench import pipeline as P
    from bench import profile as prof
    from bench import ratelimit as RL

    cfg = _config(quick)
    results: dict[str, Any] = {"meta": {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": quick, "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(), "python": platform.python_version(),
        "sections": sections, "default_pool": P.DEFAULT_POOL,
    }, "notes": NOTES}
    t0 = time.monotonic()
    if "profile" in sections:
        c = cfg["profile"]
        H.log(f"profile: our code per job in-process, {c['n_jobs']} jobs")
        runs = [prof.run_in_process(c["n_jobs"]) for _ in range(1 if quick else 3)]
        results["profile"] = {k: H.summarize([r[k] for r in runs]) for k in runs[0]}
    if "throughput" in sections:
        results["throughput"] = P.measure_throughput(**cfg["throughput"])
    if "latency" in sections:
        results["latency"] = P.measure_latency(**cfg["latency"])
    if "critical" in sections:
        results["critical_path"] = P.measure_critical_path(**cfg["critical"])
    if "concurrency" in sections:
        results["concurrency"] = _concurrency(cfg["concurrency"])
    if "scaling" in sections:
        results["scaling"] = P.measure_scaling(**cfg["scaling"])
    if "memory" in sections:
        results["memory"] = P.measure_memory(**cfg["memory"])
    rl: dict[str, Any] = {}
    if "limiter" in sections:
        rl["limiter_cost"] = RL.measure_limiter_cost(**cfg["limiter"])
    if "burst" in sections:
        c = cfg["burst"]
        rl["burst"] = RL.measure_burst(repeats=c["repeats"], limits=c["limits"],
                                       pool=P.DEFAULT_POOL)
        rl["burst"]["bound_s"] = RL.burst_bound_s(c["limits"])
    if "sustained" in sections and cfg["sustained"]:
        c = cfg["sustained"]
        rl["sustained"] = RL.measure_sustained(repeats=c["repeats"], window=c["window"],
                                               limits=c["limits"], pool=P.DEFAULT_POOL)
    if rl:
        results["ratelimit"] = rl
    if "streams" in sections:
        from bench import streams as ST

        results["streams"] = ST.measure_streams(**cfg["streams"])
    if "fairness" in sections:
        from bench import fairness as FS

        results["fairness"] = FS.measure_fairness(**cfg["fairness"])
    if "silent" in sections:
        from bench import silent as SI

        results["silent"] = SI.measure_silent(**cfg["silent"])
    if "caching" in sections:
        from bench import caching as CA

        results["caching"] = CA.measure_caching(**cfg["caching"])
    if "interview" in sections:
        from bench import interview as IV

        results["interview"] = IV.measure_interview(**cfg["interview"])
    results["meta"]["duration_s"] = time.monotonic() - t0
    results["meta"]["load_avg_at_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny counts, one run each")
    p.add_argument("--only", default="", help="comma-separated: " + ", ".join(SECTIONS))
    p.add_argument("--out", type=Path, default=report.RESULTS_DIR, help="report directory")
    p.add_argument("--update", action="store_true",
                   help="re-run the --only sections into the existing latest.json (and into "
                        "bench/RESULTS.md when that report came from a full run)")
    a = p.parse_args(argv)
    wanted = [s.strip() for s in a.only.split(",") if s.strip()]
    if "ratelimit" in wanted:
        wanted = [s for s in wanted if s != "ratelimit"] + ["limiter", "burst", "sustained"]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    sections = [s for s in SECTIONS if not wanted or s in wanted]
    results = run(sections, a.quick)
    committed = not a.quick and not wanted
    if a.update:
        base = json.loads((a.out / "latest.json").read_text())
        if base["meta"].get("quick") != a.quick:
            p.error("--update must use the same --quick as the report it updates")
        rl = {**base.get("ratelimit", {}), **results.pop("ratelimit", {})}
        base.update({k: v for k, v in results.items() if k not in ("meta", "notes")})
        if rl:
            base["ratelimit"] = rl
        updates = [u for u in base["meta"].get("updated", []) if u["sections"] != sections]
        base["meta"]["updated"] = [*updates, {"sections": sections,
                                              "at": results["meta"]["started"],
                                              "duration_s": results["meta"]["duration_s"]}]
        base["notes"] = results["notes"]
        committed = not a.quick and base["meta"].get("sections") == list(SECTIONS)
        results = base
    path = report.write(results, committed=committed, out_dir=a.out)
    print(report.markdown(results))
    H.log(f"report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
