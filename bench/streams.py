"""Event streams do not starve the API: GET /healthz and POST /v1/jobs latency on one API process
(uvicorn), idle and then with N `GET /v1/jobs/{id}/events` streams open on queued jobs.

The streams are held by a helper process (`python -m bench.streams --hold ...`, asyncio + httpx)
so that the requests we time do not share a GIL with a thousand open connections; no worker
runs, so the jobs stay queued and the streams quiet: what the API pays is the watcher's polling
and the open connections. Each repeat measures idle, loaded, then checks the streams are freed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import harness as H
from testkit.procs import BIN, Proc, clean_env, free_port, wait_http

# Streams opened at once by the holder: a burst of a thousand connects would measure the listen
# backlog, not the API.
OPEN_AT_ONCE = 50
QUIET_S = 3.0  # the window over which the API's CPU is sampled, streams open, no requests
SETTLE_S = 2.0  # after the last stream opened: the opening burst's tail is not the steady cost


def _create_jobs(db_url: str, n: int) -> list[str]:
    """Queued jobs owned by the bench key, written directly (not timed, nothing enqueued)."""
    from api.deps import owner_of
    from masterplan.db import queries as q
    from masterplan.db.session import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine).begin() as s:
            return [q.create_job(s, owner=owner_of(H.API_KEY), idea=f"streams bench idea {i}",
                                 context=None, deadline_s=86400).id for i in range(n)]
    finally:
        engine.dispose()


@contextmanager
def _api(env: dict[str, str]) -> Iterator[tuple[str, Proc]]:
    H.LOG_DIR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port), "--log-level",
                 "warning"], clean_env(**env), H.LOG_DIR / "streams-api.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base, proc
    finally:
        proc.stop()


def _latencies(client: httpx.Client, n: int) -> dict[str, list[float]]:
    """n sequential GET /healthz, then n POST /v1/jobs: milliseconds each."""
    out: dict[str, list[float]] = {"healthz": [], "submit": []}
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get("/healthz")
        out["healthz"].append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, r.text
    for i in range(n):
        t0 = time.perf_counter()
        r = client.post("/v1/jobs", json={"idea": f"submitted during the streams bench {i}"},
                        headers=H.AUTH)
        out["submit"].append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 202, r.text
    return out


def _stream_stats(client: httpx.Client) -> dict[str, Any]:
    return dict(client.get("/v1/streams", headers=H.AUTH).json())


def _cpu_pct(pid: int, seconds: float) -> float:
    c0, t0 = H.tree_cpu(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (H.tree_cpu(pid) - c0) / (time.monotonic() - t0)


@contextmanager
def _holder(base: str, job_ids: list[str], n: int, jobs_file: Path) -> Iterator[dict[str, float]]:
    """The helper process holding n streams open; yields its report once every stream has had
    its first event."""
    jobs_file.write_text(json.dumps(job_ids))
    proc = Proc([str(BIN / "python"), "-m", "bench.streams", "--hold", "--base", base,
                 "--streams", str(n), "--jobs-file", str(jobs_file)],
                clean_env(BENCH_STREAMS_KEY=H.API_KEY), H.LOG_DIR / "streams-holder.log")
    try:
        deadline = time.monotonic() + 180
        while True:
            lines = [ln for ln in proc.output().splitlines() if ln.startswith("OPEN ")]
            if lines:
                _, opened, failed, seconds = lines[0].split()
                break
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stream holder did not report: {proc.output()[-2000:]}")
            time.sleep(0.1)
        yield {"opened": float(opened), "failed": float(failed), "open_s": float(seconds)}
    finally:
        proc.stop()


def measure_streams(*, streams: int, jobs: int, requests: int, repeats: int) -> dict[str, Any]:
    """Latency p50/p95 of GET /healthz and POST /v1/jobs, idle and with `streams` open on
    `jobs` queued jobs; the ratio loaded/idle per repeat."""
    prefix = f"mpbench-streams-{uuid.uuid4().hex[:8]}"
    figs: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figs.setdefault(name, []).append(value)

    with H.fresh_database("mp_bench_streams") as db_url:
        job_ids = _create_jobs(db_url, jobs)
        env = {"DATABASE_URL": db_url, "REDIS_URL": H.redis_url(H.OURS_DB),
               "REDIS_KEY_PREFIX": prefix, "API_KEYS": H.API_KEY, "LOG_LEVEL": "WARNING",
               "MAX_STREAMS_PER_KEY": str(streams + 10), "MAX_STREAMS": str(streams + 10),
               # The figure is the latency of POST /v1/jobs, not the per-key limit's 429.
               "KEY_SUBMISSIONS_PER_MIN": "0"}
        poll_s = H.settings_for(env).stream_poll_s
        try:
            with _api(env) as (base, api), httpx.Client(base_url=base, timeout=30) as client:
                _latencies(client, 20)  # warm-up: connections, code paths, the job table
                for rep in range(repeats):
                    H.log(f"streams: repeat {rep + 1}/{repeats}: idle, then {streams} streams "
                          f"on {jobs} queued jobs, {requests} requests of each kind")
                    add("api_cpu_pct_quiet_no_streams", _cpu_pct(api.pid, QUIET_S))
                    idle = _latencies(client, requests)
                    with _holder(base, job_ids, streams,
                                 H.LOG_DIR / "streams-jobs.json") as held:
                        stats = _stream_stats(client)
                        assert stats["open_in_process"] == held["opened"], (stats, held)
                        add("streams_open", held["opened"])
                        add("streams_failed", held["failed"])
                        add("open_s", held["open_s"])
                        time.sleep(SETTLE_S)
                        add("api_cpu_pct_quiet_streams", _cpu_pct(api.pid, QUIET_S))
                        loaded = _latencies(client, requests)
                        still = _stream_stats(client)["open_in_process"]
                    t0 = time.monotonic()
                    freed = H.wait_until(lambda: (s := _stream_stats(client))["open_in_process"] == 0
                                         and not s["watcher_running"], timeout=30, interval=0.05)
                    add("freed_s", time.monotonic() - t0 if freed else float("nan"))
                    add("streams_open_after_loaded_phase", still)
                    for kind in ("healthz", "submit"):
                        for p in (50, 95):
                            i = H.percentile(idle[kind], p)
                            lo = H.percentile(loaded[kind], p)
                            add(f"{kind}_idle_p{p}_ms", i)
                            add(f"{kind}_loaded_p{p}_ms", lo)
                            add(f"{kind}_ratio_p{p}", lo / i)
        finally:
            H.forget_keys(prefix)
    return {"streams": streams, "jobs": jobs, "requests": requests, "repeats": repeats,
            "poll_s": poll_s, **{k: H.summarize(v) for k, v in figs.items()}}


# ------------------------------------------------------------------ the holder process


async def hold(base: str, paths: list[str], n: int, key: str, *, ready_at_data: bool = True
               ) -> int:
    """Hold `n` event streams open on `paths` (round robin) until SIGTERM; print `OPEN <opened>
    <failed> <s>` once each has opened (at its first `data:` line, or with `ready_at_data`
    False at its response: a stream that may stay quiet) or failed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    opened, failed, settled = 0, 0, asyncio.Event()
    auth = {"Authorization": f"Bearer {key}"}

    def count(ok: bool) -> None:
        nonlocal opened, failed
        opened, failed = opened + ok, failed + (not ok)
        if opened + failed == n:
            settled.set()

    async def one(client: httpx.AsyncClient, path: str) -> None:
        await gate.acquire()
        first = True

        def ready() -> None:
            nonlocal first
            first = False
            gate.release()
            count(True)

        try:  # the gate is released once the stream is open, or when it fails
            async with client.stream("GET", path, headers=auth) as r:
                if r.status_code != 200:
                    print(f"stream refused: {r.status_code}", flush=True)
                    return
                if not ready_at_data:
                    ready()
                async for line in r.aiter_lines():
                    if first and line.startswith("data: "):
                        ready()
        except httpx.HTTPError as exc:
            print(f"stream error: {type(exc).__name__}: {exc}", flush=True)
        finally:
            if first:
                gate.release()
                count(False)

    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=base, limits=limits,
                                 timeout=httpx.Timeout(30.0, read=None)) as client:
        tasks = [asyncio.create_task(one(client, paths[i % len(paths)])) for i in range(n)]
        done = asyncio.create_task(stop.wait())
        await asyncio.wait([asyncio.create_task(settled.wait()), done],
                           return_when=asyncio.FIRST_COMPLETED)
        print(f"OPEN {opened} {failed} {time.monotonic() - t0:.3f}", flush=True)
        await stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return 0


def _hold_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.streams")
    p.add_argument("--hold", action="store_true", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--jobs-file", type=Path, required=True)
    a = p.parse_args(argv)
    paths = [f"/v1/jobs/{job_id}/events" for job_id in json.loads(a.jobs_file.read_text())]
    return asyncio.run(hold(a.base, paths, a.streams, os.environ["BENCH_STREAMS_KEY"]))


if __name__ == "__main__":
    sys.exit(_hold_main(sys.argv[1:]))
