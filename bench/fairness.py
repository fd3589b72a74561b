"""Fair share across keys: key A floods the API with jobs against a provider that allows only a
few jobs' worth a minute, then key B submits one. How long does B's job take, against the same
job on the idle system?

One fake provider process (groq flavour, TPM/RPM limits, a fixed latency per call), the API and
one worker process (threads), a fresh PostgreSQL database. Each way runs on its own stack:

- idle: B's job alone, `repeats` times, the bucket refilled in between;
- fair: the defaults (KEY_MAX_JOBS_IN_FLIGHT, FAIR_HEADROOM); A submits `flood` jobs as fast
  as it can (KEY_SUBMISSIONS_PER_MIN off, so that every one is stored), and once the provider's
  bucket is drained B submits a job, `repeats` times, GAP_S apart. The first finds the bucket
  drained by a single tenant (no headroom was kept for anyone yet); the later ones find it;
- unfair: the same with the per-key limits off (KEY_MAX_JOBS_IN_FLIGHT very high,
  FAIR_HEADROOM=0): first come, first served, which is what the system did before.

A job's time is its `finished_at - created_at` as the API reports it. A's flood is left
unfinished: the stack is torn down after B's last job.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench import harness as H
from bench.ratelimit import IDEA, Limits, ours_stack

KEY_A, KEY_B = "bench-flood-key-0123456789", "bench-other-key-0123456789"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
# A job reserves about 8,000 tokens: 60,000 TPM is seven or so jobs a minute, and
# FAIR_HEADROOM's 20% holds one whole job of another key.
LIMITS = Limits(tpm=60_000, rpm=600)
GAP_S = 15.0  # between key B's jobs: the headroom refills
LATENCY_S = 0.3
UNFAIR = {"KEY_MAX_JOBS_IN_FLIGHT": "1000000", "FAIR_HEADROOM": "0"}


def _fake_args() -> list[str]:
    return [*LIMITS.fake_args(), "--latency-s", str(LATENCY_S)]


def _job_seconds(client: httpx.Client, auth: dict[str, str], timeout: float) -> float:
    """Submit one job and wait for it: its duration by the API's own timestamps (nan when it
    has not finished within `timeout`)."""
    from datetime import datetime

    r = client.post("/v1/jobs", json={"idea": IDEA}, headers=auth)
    r.raise_for_status()
    job_id = r.json()["id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
        if job["status"] not in ("queued", "running"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            done, made = (datetime.fromisoformat(job[k]) for k in ("finished_at", "created_at"))
            return (done - made).total_seconds()
        time.sleep(0.05)
    return timeout  # not finished: counted as the timeout


def _flood(client: httpx.Client, n: int) -> int:
    for i in range(n):
        r = client.post("/v1/jobs", json={"idea": f"{IDEA} (flood {i})"}, headers=AUTH_A)
        r.raise_for_status()
    return n


def _drained(client: httpx.Client) -> bool:
    """The provider's bucket has less than a tenth of its capacity left."""
    groq = next(p for p in client.get("/v1/providers", headers=AUTH_B).json()["providers"]
                if p["name"] == "groq")
    bucket = groq["bucket"]
    return bool(bucket["tokens"] < bucket["token_capacity"] / 10)


def _run(way: str, *, flood: int, repeats: int, timeout: float) -> list[float]:
    extra = {"API_KEYS": f"{KEY_A},{KEY_B}", "KEY_SUBMISSIONS_PER_MIN": "0", "LOG_LEVEL": "WARNING",
             **(UNFAIR if way == "unfair" else {})}
    times: list[float] = []
    with H.fake_provider_process(*_fake_args(), name=f"fake-fair-{way}") as url, \
            ours_stack(url, LIMITS, workers=1, concurrency=32, pool="threads",
                       extra=extra) as (base, _rt, _probe), \
            httpx.Client(base_url=base, timeout=30) as client:
        if way == "idle":
            for rep in range(repeats):
                times.append(_job_seconds(client, AUTH_B, timeout))
                H.log(f"fairness idle {rep + 1}/{repeats}: {times[-1]:.2f} s")
                time.sleep(60 * 10_000 / LIMITS.tpm)  # more than a job's tokens refill
            return times
        t0 = time.monotonic()
        _flood(client, flood)
        H.log(f"fairness {way}: {flood} jobs of key A stored in {time.monotonic() - t0:.1f} s")
        if not H.wait_until(lambda: _drained(client), timeout=120, interval=0.5):
            raise RuntimeError("the flood did not drain the provider's bucket")
        for rep in range(repeats):
            if rep:
                time.sleep(GAP_S)
            times.append(_job_seconds(client, AUTH_B, timeout))
            H.log(f"fairness {way} {rep + 1}/{repeats}: key B's job {times[-1]:.2f} s")
    return times


def measure_fairness(*, flood: int, repeats: int, timeout: float = 180) -> dict[str, Any]:
    """B's job time idle, under A's flood with fair share, and under it first come first served."""
    idle = _run("idle", flood=0, repeats=repeats, timeout=timeout)
    fair = _run("fair", flood=flood, repeats=repeats, timeout=timeout)
    unfair = _run("unfair", flood=flood, repeats=repeats, timeout=timeout)
    base = H.summarize(idle)["median"]
    return {"flood": flood, "repeats": repeats, "tpm": LIMITS.tpm, "rpm": LIMITS.rpm,
            "latency_s": LATENCY_S, "timeout_s": timeout,
            "idle_s": H.summarize(idle), "fair_s": H.summarize(fair),
            "unfair_s": H.summarize(unfair),
            "fair_ratio": [t / base for t in fair], "unfair_ratio": [t / base for t in unfair]}
