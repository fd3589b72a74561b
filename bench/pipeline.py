"""Benchmarks of the masterplan pipeline against raw Celery running the same canvas shape.

Ours: `celery -A workers worker` processes, the stub provider behind the token bucket, Redis
broker and result backend (database 8), a fresh PostgreSQL database migrated to head, real
ledger rows. Raw: `celery -A bench.raw_celery worker` (database 9), the same configuration,
no-op tasks. Both started with the same flags; both submitted from this process.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from bench import harness as H
from bench.profile import IDEA, stub_env

DEFAULT_POOL = "threads"  # the pool this benchmark recommends (see measure_concurrency)
DEFAULT_CONCURRENCY = 100
POLL_S = 0.005  # completion polling; the figures use the system's own finish timestamps
IDLE_GAP_S = 0.05  # between one-at-a-time jobs


# ------------------------------------------------------------------ submitting and waiting


def _quiet_submitter() -> None:
    """This process reads results by key, so it needs no result subscriptions.

    Celery's Redis backend subscribes the sending process to every task it sends (and keeps a
    reference per chord header task); the workers do not need that, and it would make the
    submitting loop the bottleneck. Applies to raw and ours alike.
    """
    from celery.result import _set_task_join_will_block

    _set_task_join_will_block(True)


def ours_app() -> Any:
    """The real app, pointed at the benchmark's Redis database before it is first imported."""
    url = H.redis_url(H.OURS_DB)
    os.environ["REDIS_URL"] = url
    for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(var, None)
    from workers import app

    if app.conf.broker_url != url:
        raise RuntimeError("the Celery app was configured before the benchmark "
                           f"({app.conf.broker_url})")
    _quiet_submitter()
    return app


def forget_results(app: Any) -> None:
    """Drop the result objects Celery keeps for chord headers (see `_quiet_submitter`)."""
    backend = app.backend
    for mapping in getattr(backend, "_pending_results", ()):
        mapping.clear()
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "subscribed_to", None) is not None:
        consumer.subscribed_to.clear()


@dataclass
class Ours:
    """A fresh database, a flushed Redis database and a runtime to create and read jobs."""

    db_url: str
    env: dict[str, str]
    rt: Any
    app: Any  # the real Celery app (to ping its workers)

    def create(self, n: int, context: dict[str, Any] | None = None) -> list[str]:
        from masterplan.db import queries as q

        with self.rt.sessions.begin() as s:
            return [q.create_job(s, owner="bench", idea=IDEA, context=context,
                                 deadline_s=3600).id for _ in range(n)]

    def enqueue(self, ids: list[str]) -> float:
        """Send each job's canvas; returns the wall-clock time the first was sent."""
        from tasks.pipeline import enqueue

        t0 = time.time()
        for job_id in ids:
            enqueue(job_id)
        return t0

    def finished(self, ids: list[str]) -> tuple[int, int, float | None]:
        """(finished, succeeded, the last finished_at as epoch seconds)."""
        import sqlalchemy as sa

        stmt = sa.text(
            "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded'), max(finished_at) "
            "FROM jobs WHERE id = ANY(:ids) AND status IN ('succeeded', 'failed')")
        with self.rt.engine.connect() as c:
            n, ok, last = c.execute(stmt, {"ids": ids}).one()
        return int(n), int(ok), (last.timestamp() if last else None)

    def wait(self, ids: list[str], timeout: float,
             interval: float = 0.05) -> tuple[int, int, float]:
        deadline = time.monotonic() + timeout
        while True:
            n, ok, last = self.finished(ids)
            if n == len(ids) or time.monotonic() > deadline:
                return n, ok, last or time.time()
            time.sleep(interval)


@contextmanager
def ours(**extra_env: str) -> Iterator[Ours]:
    from masterplan.runtime import build_runtime

    app = ours_app()
    H.flush_redis(H.OURS_DB)
    with H.fresh_database() as db:
        env = {**stub_env(db), **extra_env}
        rt = build_runtime(H.settings_for({**env, "LOG_LEVEL": "WARNING"}))
        try:
            yield Ours(db, env, rt, app)
        finally:
            rt.close()


class Raw:
    """The raw Celery baseline: submit canvases, read the finalize results by key."""

    def __init__(self) -> None:
        import redis

        from bench import raw_celery

        _quiet_submitter()
        H.flush_redis(H.RAW_DB)
        self.mod = raw_celery
        self.env = {"REDIS_URL": raw_celery.BROKER, "BENCH_RAW_REDIS_URL": raw_celery.BROKER}
        self.redis = redis.Redis.from_url(raw_celery.BROKER)

    def enqueue(self, n: int) -> tuple[float, list[str]]:
        t0 = time.time()
        ids = [self.mod.enqueue(str(uuid.uuid4())).id for _ in range(n)]
        return t0, ids

    def finished(self, ids: list[str]) -> tuple[int, float | None]:
        vals = self.redis.mget([f"celery-task-meta-{i}" for i in ids])
        done = [json.loads(v) for v in vals if v]
        last = max((datetime.fromisoformat(d["date_done"]).timestamp() for d in done),
                   default=None)
        return len(done), last

    def wait(self, ids: list[str], timeout: float, interval: float = 0.05) -> tuple[int, float]:
        deadline = time.monotonic() + timeout
        while True:
            n, last = self.finished(ids)
            if n == len(ids) or time.monotonic() > deadline:
                return n, last or time.time()
            time.sleep(interval)

    def close(self) -> None:
        forget_results(self.mod.app)
        self.redis.close()


# ------------------------------------------------------------------ 1 and 5: throughput


def _ours_batch(o: Ours, workers: list[H.Worker], n: int) -> dict[str, float]:
    ids = o.create(n)
    cpu0, sys0 = sum(w.cpu() for w in workers), H.system_cpu()
    t0 = o.enqueue(ids)
    done, ok, last = o.wait(ids, timeout=60 + n)
    cpu, syscpu = sum(w.cpu() for w in workers) - cpu0, H.system_cpu() - sys0
    return {"jobs_per_s": done / max(1e-6, last - t0), "done": done, "succeeded": ok,
            "worker_cpu_ms_per_job": 1000 * cpu / n, "system_cpu_ms_per_job": 1000 * syscpu / n}


def _raw_batch(raw: Raw, workers: list[H.Worker], n: int) -> dict[str, float]:
    cpu0, sys0 = sum(w.cpu() for w in workers), H.system_cpu()
    t0, ids = raw.enqueue(n)
    done, last = raw.wait(ids, timeout=60 + n)
    cpu, syscpu = sum(w.cpu() for w in workers) - cpu0, H.system_cpu() - sys0
    return {"jobs_per_s": done / max(1e-6, last - t0), "done": done, "succeeded": done,
            "worker_cpu_ms_per_job": 1000 * cpu / n, "system_cpu_ms_per_job": 1000 * syscpu / n}


def measure_throughput(*, jobs: int, repeats: int, processes: int = 2,
                       warmup: int = 20) -> dict[str, Any]:
    """Jobs/s of ours and raw with `processes` prefork worker processes, runs interleaved."""
    H.log(f"throughput: {repeats} x {jobs} jobs, prefork -c {processes}, ours vs raw")
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    raw = Raw()
    with ours() as o, \
            H.workers("workers", o.env, probe=o.app, pool="prefork", concurrency=processes,
                      name="ours") as ow, \
            H.workers("bench.raw_celery", raw.env, probe=raw.mod.app, pool="prefork",
                      concurrency=processes, name="raw") as rw:
        _ours_batch(o, ow, warmup)
        _raw_batch(raw, rw, warmup)
        for i in range(repeats):
            runs["raw"].append(_raw_batch(raw, rw, jobs))
            runs["ours"].append(_ours_batch(o, ow, jobs))
            H.log(f"  run {i + 1}: ours {runs['ours'][-1]['jobs_per_s']:.1f} jobs/s, "
                  f"raw {runs['raw'][-1]['jobs_per_s']:.1f} jobs/s")
    raw.close()
    ratios = [a["jobs_per_s"] / b["jobs_per_s"] for a, b in zip(runs["ours"], runs["raw"],
                                                                    strict=True)]
    return {
        "processes": processes, "jobs": jobs, "repeats": repeats,
        "ours_jobs_per_s": H.summarize([r["jobs_per_s"] for r in runs["ours"]]),
        "raw_jobs_per_s": H.summarize([r["jobs_per_s"] for r in runs["raw"]]),
        "ratio": H.summarize(ratios),
        **{f"{who}_{k}": H.summarize([r[k] for r in runs[who]])
           for who in ("ours", "raw") for k in ("worker_cpu_ms_per_job", "system_cpu_ms_per_job")},
        "ours_failed_jobs": sum(r["done"] - r["succeeded"] for r in runs["ours"]),
        "ours_unfinished_jobs": sum(jobs - r["done"] for r in runs["ours"]),
        "raw_unfinished_jobs": sum(jobs - r["done"] for r in runs["raw"]),
    }


def measure_scaling(*, jobs: int, repeats: int,
                    counts: tuple[int, ...] = (1, 2, 4)) -> dict[str, Any]:
    """Jobs/s with 1, 2 and 4 prefork processes, ours and raw (runs interleaved)."""
    out: dict[str, Any] = {"jobs": jobs, "repeats": repeats, "by_processes": {}}
    for n in counts:
        r = measure_throughput(jobs=jobs, repeats=repeats, processes=n, warmup=10)
        out["by_processes"][str(n)] = {
            k: r[k] for k in ("ours_jobs_per_s", "raw_jobs_per_s", "ratio",
                              "ours_system_cpu_ms_per_job", "raw_system_cpu_ms_per_job")}
    return out


# ------------------------------------------------------------------ 2 and 3: latency


def _latencies_raw(raw: Raw, n: int) -> list[float]:
    """apply_async -> the finalize result's own date_done (polled every 5 ms)."""
    out = []
    for _ in range(n):
        t0 = time.time()
        fid = raw.mod.enqueue(str(uuid.uuid4())).id
        key = f"celery-task-meta-{fid}"
        while not (v := raw.redis.get(key)):
            time.sleep(POLL_S)
        out.append(datetime.fromisoformat(json.loads(v)["date_done"]).timestamp() - t0)
        time.sleep(IDLE_GAP_S)
    return out


def _latencies_ours_http(o: Ours, base: str, n: int, timeout: float = 30) -> tuple[list[float],
                                                                                 list[float]]:
    """POST over HTTP -> the job's own finished_at in the database (polled every 5 ms)."""
    import sqlalchemy as sa

    stmt = sa.text("SELECT status, finished_at FROM jobs WHERE id = :id")
    e2e, post = [], []
    with httpx.Client(base_url=base, headers=H.AUTH, timeout=30) as client, \
            o.rt.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(n):
            t0 = time.time()
            r = client.post("/v1/jobs", json={"idea": IDEA})
            t1 = time.time()
            if r.status_code != 202:
                raise RuntimeError(f"POST /v1/jobs: {r.status_code} {r.text[:300]}")
            job_id = r.json()["id"]
            deadline = time.monotonic() + timeout
            while True:
                status, finished = conn.execute(stmt, {"id": job_id}).one()
                if status in ("succeeded", "failed"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} not finished after {timeout} s")
                time.sleep(POLL_S)
            e2e.append(finished.timestamp() - t0)
            post.append(t1 - t0)
            time.sleep(IDLE_GAP_S)
    return e2e, post


def _pcts(values: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * H.percentile(values, 50), "p95_ms": 1000 * H.percentile(values, 95)}


def measure_latency(*, jobs: int, repeats: int) -> dict[str, Any]:
    """One job at a time on an idle system: ours over HTTP -> finished in the DB, raw Celery."""
    H.log(f"latency: {repeats} x {jobs} jobs one at a time, prefork -c 2, ours (HTTP) vs raw")
    per: dict[str, list[float]] = {k: [] for k in (
        "ours_p50_ms", "ours_p95_ms", "raw_p50_ms", "raw_p95_ms", "ratio_p50", "ratio_p95",
        "post_p50_ms")}
    raw = Raw()
    with ours() as o, H.api_process(o.env) as base, \
            H.workers("workers", o.env, probe=o.app, pool="prefork", concurrency=2,
                      name="ours-lat"), \
            H.workers("bench.raw_celery", raw.env, probe=raw.mod.app, pool="prefork",
                      concurrency=2, name="raw-lat"):
        _latencies_raw(raw, 5)
        _latencies_ours_http(o, base, 5)
        for i in range(repeats):
            r = _pcts(_latencies_raw(raw, jobs))
            e2e, post = _latencies_ours_http(o, base, jobs)
            ours_p = _pcts(e2e)
            per["raw_p50_ms"].append(r["p50_ms"])
            per["raw_p95_ms"].append(r["p95_ms"])
            per["ours_p50_ms"].append(ours_p["p50_ms"])
            per["ours_p95_ms"].append(ours_p["p95_ms"])
            per["ratio_p50"].append(ours_p["p50_ms"] / r["p50_ms"])
            per["ratio_p95"].append(ours_p["p95_ms"] / r["p95_ms"])
            per["post_p50_ms"].append(1000 * H.percentile(post, 50))
            H.log(f"  run {i + 1}: ours p50 {ours_p['p50_ms']:.1f} ms "
                  f"p95 {ours_p['p95_ms']:.1f} ms; raw p50 {r['p50_ms']:.1f} ms "
                  f"p95 {r['p95_ms']:.1f} ms")
    raw.close()
    return {"jobs": jobs, "repeats": repeats} | {k: H.summarize(v) for k, v in per.items()}


def measure_critical_path(*, jobs: int, repeats: int, latency_ms: int = 300,
                          pool: str = DEFAULT_POOL, concurrency: int = 16) -> dict[str, Any]:
    """The stub at a fixed latency L per call: one job at a time against 3L."""
    H.log(f"critical path: L = {latency_ms} ms, {repeats} x {jobs} jobs, "
          f"-P {pool} -c {concurrency}")
    per: dict[str, list[float]] = {"p50_ms": [], "p95_ms": [], "ratio_p50": [], "ratio_p95": []}
    crit = 3 * latency_ms
    with ours(STUB_LATENCY_MS=str(latency_ms)) as o, \
            H.api_process(o.env, name="api-crit") as base, \
            H.workers("workers", o.env, probe=o.app, pool=pool, concurrency=concurrency,
                      name="ours-crit"):
        _latencies_ours_http(o, base, 2)
        for i in range(repeats):
            e2e, _post = _latencies_ours_http(o, base, jobs)
            p = _pcts(e2e)
            per["p50_ms"].append(p["p50_ms"])
            per["p95_ms"].append(p["p95_ms"])
            per["ratio_p50"].append(crit / p["p50_ms"])
            per["ratio_p95"].append(crit / p["p95_ms"])
            H.log(f"  run {i + 1}: p50 {p['p50_ms']:.0f} ms, p95 {p['p95_ms']:.0f} ms "
                  f"(critical path {crit} ms)")
    return {"latency_ms": latency_ms, "critical_path_ms": crit, "pool": pool,
            "concurrency": concurrency, "jobs": jobs, "repeats": repeats} | {
        k: H.summarize(v) for k, v in per.items()}


# ------------------------------------------------------------------ 4: concurrency under latency


def _in_flight(rt: Any, ids: list[str]) -> tuple[int, float, int]:
    """Peak and mean concurrently open provider calls, from the ledger.

    Each successful call is the interval [created_at - latency_ms, created_at] (the row is
    written as the call returns). Returns (peak, mean over the busy span, calls).
    """
    import sqlalchemy as sa

    stmt = sa.text("SELECT created_at, latency_ms FROM llm_calls "
                   "WHERE job_id = ANY(:ids) AND outcome = 'ok'")
    with rt.engine.connect() as c:
        rows = c.execute(stmt, {"ids": ids}).all()
    events = []
    for created, lat in rows:
        end = created.timestamp()
        events.append((end - lat / 1000, 1))
        events.append((end, -1))
    events.sort()
    peak = cur = 0
    busy = 0.0
    for (t, d), nxt in zip(events, events[1:] + [(events[-1][0] if events else 0, 0)],
                           strict=True):
        cur += d
        peak = max(peak, cur)
        busy += cur * (nxt[0] - t)
    span = (events[-1][0] - events[0][0]) if events else 0.0
    return peak, (busy / span if span else 0.0), len(rows)


def _queued(redis_url: str) -> int:
    """Messages still waiting in the broker's queues (any key prefix)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(k)) for k in client.scan_iter("*", count=1000)
                   if client.type(k) == b"list")
    finally:
        client.close()


def _concurrency_run(pool: str, concurrency: int, *, jobs: int, latency_s: float,
                     window_s: float, processes: int = 1) -> dict[str, float]:
    with ours(STUB_LATENCY_MS=str(int(latency_s * 1000))) as o, \
            H.workers("workers", o.env, probe=o.app, pool=pool, concurrency=concurrency,
                      name=f"ours-{pool}{concurrency}x{processes}", count=processes) as ws:
        ids = o.create(jobs)
        base_rss = sum(w.rss() for w in ws)
        with H.Sampler([w.pid for w in ws]) as sampler:
            t0 = o.enqueue(ids)
            done, ok, last = o.wait(ids, timeout=window_s, interval=0.2)
            elapsed = (last if done == jobs else time.time()) - t0
        queued = _queued(o.env["REDIS_URL"]) if done < jobs else 0
        peak, mean, calls = _in_flight(o.rt, ids)
    bound = peak / latency_s / 7
    return {
        "jobs_per_s": done / elapsed, "jobs_done": done, "jobs_succeeded": ok,
        "elapsed_s": elapsed, "calls_done": calls, "calls_per_s": calls / elapsed,
        "peak_in_flight": peak, "mean_in_flight": mean, "utilization": mean / peak if peak else 0,
        "bound_jobs_per_s": bound, "efficiency": (done / elapsed) / bound if bound else 0.0,
        "rss_mb_peak": sampler.peak / 2**20, "rss_mb_idle": base_rss / 2**20,
        "complete": float(done == jobs), "queued_at_end": queued,
    }


def measure_concurrency(*, repeats: int, latency_s: float,
                        pools: tuple[tuple[str, int, int, int, float], ...]) -> dict[str, Any]:
    """Jobs/s, calls in flight and worker RSS per pool, the stub at L per call.

    `pools`: (pool, -c, worker processes, jobs sent at once, window in seconds)."""
    out: dict[str, Any] = {"latency_s": latency_s, "repeats": repeats, "pools": {}}
    for pool, conc, processes, jobs, window in pools:
        name = f"{pool}-c{conc}" + (f"x{processes}" if processes > 1 else "") + f", {jobs} jobs"
        H.log(f"concurrency: {processes} x -P {pool} -c {conc}, {jobs} jobs at once, "
              f"L = {latency_s} s")
        runs = []
        for i in range(repeats):
            r = _concurrency_run(pool, conc, jobs=jobs, latency_s=latency_s, window_s=window,
                                 processes=processes)
            runs.append(r)
            H.log(f"  run {i + 1}: {r['jobs_done']:.0f}/{jobs} jobs in {r['elapsed_s']:.1f} s = "
                  f"{r['jobs_per_s']:.2f} jobs/s, peak {r['peak_in_flight']:.0f} calls in flight "
                  f"(mean {r['mean_in_flight']:.0f}), RSS {r['rss_mb_peak']:.0f} MB")
        out["pools"][name] = {"pool": pool, "concurrency": conc, "processes": processes,
                              "jobs": jobs, "window_s": window} | {
            k: H.summarize([r[k] for r in runs]) for k in runs[0]}
    return out


# ------------------------------------------------------------------ 6: memory


def measure_memory(*, repeats: int, checkpoints: tuple[int, ...] = (10, 1000, 2000),
                   pool: str = DEFAULT_POOL,
                   concurrency: int = DEFAULT_CONCURRENCY) -> dict[str, Any]:
    """RSS of one worker process after each checkpoint's jobs (zero-latency stub).

    Each batch is sent at once and finished before sampling. Growth from the first to the
    second checkpoint includes the pool reaching its concurrency (threads, and a Redis and a
    database connection per busy thread); growth after that is what a leak would look like."""
    marks = sorted(set(checkpoints))
    H.log(f"memory: one worker process (-P {pool} -c {concurrency}), RSS at {marks} jobs")
    per: dict[str, list[float]] = {f"rss_mb_at_{m}": [] for m in marks}
    per |= {"growth_mb": [], "late_growth_mb": [], "threads_at_end": []}
    for i in range(repeats):
        with ours() as o, H.workers("workers", o.env, probe=o.app, pool=pool,
                                    concurrency=concurrency, name="ours-mem") as ws:
            w = ws[0]
            done_so_far = 0
            seen = {}
            for m in marks:
                ids = o.create(m - done_so_far)
                o.enqueue(ids)
                o.wait(ids, timeout=900)
                done_so_far = m
                time.sleep(0.5)
                seen[m] = w.rss() / 2**20
                per[f"rss_mb_at_{m}"].append(seen[m])
            per["threads_at_end"].append(sum(p.num_threads() for p in H.tree(w.pid)))
            per["growth_mb"].append(seen[marks[-1]] - seen[marks[0]])
            per["late_growth_mb"].append(seen[marks[-1]] - seen[marks[-2]] if len(marks) > 2
                                         else seen[marks[-1]] - seen[marks[0]])
            H.log(f"  run {i + 1}: " + ", ".join(f"{k} jobs {v:.1f} MB" for k, v in seen.items()))
    return {"repeats": repeats, "pool": pool, "concurrency": concurrency, "marks": marks,
            "processes": "one worker process (its whole tree)"} | {
        k: H.summarize(v) for k, v in per.items()}
