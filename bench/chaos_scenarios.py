"""The fault scenarios. Each one drives a fault into its own `Stack` (`drive`), then the
properties it must show are judged from what was measured (`judge`). The two that kill Redis
(redis_flush_restart, broker_down_submit) are broker outages only when Redis is the broker, so
they run on Redis only; the others run on either broker.

Every wait polls for its event with a deadline; the only sleeps keep a fault going for its
stated length, or space the client's submissions over it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx

from bench.chaos_measure import Result, redelivery
from bench.chaos_run import Mode, Scenario
from bench.chaos_services import kill_tree, poll
from bench.chaos_stack import FakeSpec, Stack

EVENT_TIMEOUT_S = 30  # for "calls are in flight" and the like
REDIS_RECOVERY_S = 120  # every job done this long after Redis is back (empty)
SUBMIT_ANSWER_S = 1.0  # a POST must answer this fast, broker or not
BROKER_OUTAGE_S = 10
PG_OUTAGE_S = 8


def _sleep_until(at: float) -> None:
    """Keep a fault going (or space submissions) until time.time() reaches `at`."""
    time.sleep(max(0.0, at - time.time()))


def _all_succeeded(r: Result, name: str = "every job succeeded") -> None:
    bad = [f"{j['id'][:8]} {j['status']}" for j in r.jobs_detail if j["status"] != "succeeded"]
    r.check(name, r.jobs > 0 and not bad,
            f"{r.succeeded}/{r.jobs}" + (f"; not: {', '.join(bad[:6])}" if bad else ""))


def _common(r: Result) -> None:
    r.check("no stage stored twice", r.duplicate_outputs == 0, f"{r.duplicate_outputs} stages")


def _done_within(r: Result, bound_s: float, since: str = "the fault", offset_s: float = 0.0) -> None:
    took = None if r.fault_to_done_s is None else round(r.fault_to_done_s - offset_s, 1)
    r.check(f"last job finished within {bound_s:.0f} s of {since}",
            took is not None and took <= bound_s,
            f"{took} s" if took is not None else f"{r.unfinished} jobs never finished")


def _tokens_match(r: Result) -> None:
    r.check("ledger tokens = provider-charged tokens", r.ledger_tokens == r.provider_tokens,
            f"ledger {r.ledger_tokens}, providers {r.provider_tokens}")


# ------------------------------------------------------------------ 1. sigkill


def drive_sigkill(st: Stack, r: Result, m: Mode) -> None:
    """Once worker a has provider calls open, SIGKILL its whole process tree. Every job must
    succeed, the last within 60 s + 3L of the kill; a's open calls are paid and never recorded
    (in_flight_at_kill, undelivered)."""
    a = st.workers[0]
    ids = st.submit(m.jobs)
    poll(lambda: st.in_flight_on(a), EVENT_TIMEOUT_S, "provider calls in flight on worker a")
    ports, stats = a.local_ports(), st.fake_stats()
    r.fault_at = time.time()
    st.stopped_on_purpose.add(a.name)
    killed = kill_tree(a.pid)  # parent and children, as the OOM killer or a lost host would
    r.extra["in_flight_at_kill"] = sum(p in ports for s in stats.values()
                                       for p in s["in_flight_ports"])
    r.extra["in_flight_total_at_kill"] = sum(s["in_flight"] for s in stats.values())
    r.extra["killed_pids"] = len(killed)
    st.wait_finished(ids, r.fault_at + m.lost_worker_bound_s)
    # a's unacked messages: RabbitMQ hands them to b when a's connection drops; Redis keeps them
    # for the visibility timeout, and the sweep re-publishes their stages.
    got = redelivery(a.proc.output(), st.workers[1].proc.output(), r.fault_at)
    r.extra["redelivery"] = got
    r.extra["redelivered"] = got["summary"]


def judge_sigkill(r: Result, m: Mode) -> None:
    _all_succeeded(r)
    _done_within(r, m.lost_worker_bound_s, "the kill")
    _common(r)
    r.check("no stage paid twice in the ledger", r.paid_twice == 0, f"{r.paid_twice} stages")


# ------------------------------------------------------------------ 2. sigterm


def drive_sigterm(st: Stack, r: Result, m: Mode) -> None:
    """Once worker a has provider calls open, SIGTERM it (Celery's warm shutdown). It must
    finish its calls and exit 0; every job succeeds, no call is repeated."""
    a = st.workers[0]
    ids = st.submit(m.jobs)
    poll(lambda: st.in_flight_on(a), EVENT_TIMEOUT_S, "provider calls in flight on worker a")
    r.extra["in_flight_at_signal"] = st.in_flight_on(a)
    r.fault_at = time.time()
    st.stopped_on_purpose.add(a.name)
    os.kill(a.pid, signal.SIGTERM)  # the worker's own process: Celery's warm shutdown
    try:
        r.extra["worker_a_exit"] = a.proc.popen.wait(timeout=m.lost_worker_bound_s)
    except Exception:  # noqa: BLE001 - still running: judged below
        r.extra["worker_a_exit"] = None
    r.extra["warm_shutdown"] = "Warm shutdown" in a.proc.output()
    st.wait_finished(ids, r.fault_at + m.lost_worker_bound_s)


def judge_sigterm(r: Result, m: Mode) -> None:
    _all_succeeded(r)
    _done_within(r, m.lost_worker_bound_s, "the signal")
    _common(r)
    r.check("no call repeated (paid twice = 0)", r.paid_twice == 0, f"{r.paid_twice} stages")
    r.check("every charged answer was delivered", r.undelivered == 0,
            f"{r.undelivered} answers, {r.undelivered_tokens} tokens")
    _tokens_match(r)
    r.check("worker a finished its calls and exited 0 (warm shutdown)",
            r.extra.get("worker_a_exit") == 0 and bool(r.extra.get("warm_shutdown")),
            f"exit {r.extra.get('worker_a_exit')}, warm {r.extra.get('warm_shutdown')}")


# ------------------------------------------------------------------ 3. redis flush


def drive_redis_flush(st: Stack, r: Result, m: Mode) -> None:
    """With calls in flight, SIGKILL the scenario's redis-server and restart it empty on the
    same port (queues, buckets, cooldowns gone). Every job must succeed within 120 s of Redis
    coming back."""
    ids = st.submit(m.jobs)
    poll(st.in_flight, EVENT_TIMEOUT_S, "provider calls in flight")
    r.fault_at = time.time()
    st.redis.kill(signal.SIGKILL)
    st.redis.start()  # empty, on the same port: queues, chord counters, buckets, cooldowns gone
    r.extra["redis_down_s"] = round(time.time() - r.fault_at, 2)
    st.wait_finished(ids, time.time() + REDIS_RECOVERY_S)


def judge_redis_flush(r: Result, m: Mode) -> None:
    _all_succeeded(r)
    _done_within(r, REDIS_RECOVERY_S, "Redis coming back", r.extra.get("redis_down_s", 0.0))
    _common(r)


# ------------------------------------------------------------------ 4. broker down on submit


def _timed_post(st: Stack, headers: dict[str, str] | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        resp = st.http.post("/v1/jobs", json={"idea": f"chaos {st.name}: submitted in an outage"},
                            headers=headers, timeout=15)
        status: int | str = resp.status_code
        job_id = resp.json().get("id") if resp.status_code in (200, 202) else None
    except httpx.HTTPError as exc:
        status, job_id = type(exc).__name__, None
    return {"status": status, "s": round(time.perf_counter() - started, 3), "id": job_id}


def _client_at(pool: ThreadPoolExecutor, at: float, call: Callable[[], Any]) -> Future[Any]:
    """A client's call made at time.time() `at`, in its own thread: a slow answer neither
    delays the next call nor lengthens the outage."""
    def at_time() -> Any:
        _sleep_until(at)
        return call()

    return pool.submit(at_time)


def drive_broker_down(st: Stack, r: Result, m: Mode) -> None:
    """With calls in flight, stop Redis for 10 s while a client submits 3 more jobs. Each POST
    must answer within 1 s, 202 or 503; each accepted job later succeeds, a 503 leaves no row,
    no job is left open."""
    ids = st.submit(m.pick(6, 3))
    poll(st.in_flight, EVENT_TIMEOUT_S, "provider calls in flight")
    r.fault_at = time.time()
    st.redis.kill(signal.SIGTERM)
    with ThreadPoolExecutor(3) as pool:
        calls = [_client_at(pool, r.fault_at + 1 + i * 3, lambda: _timed_post(st))
                 for i in range(3)]  # spread over the outage
        _sleep_until(r.fault_at + BROKER_OUTAGE_S)
        st.redis.start()
        r.extra["redis_down_s"] = round(time.time() - r.fault_at, 2)
        answers = [c.result() for c in calls]
    r.extra["posts"] = answers
    r.extra["max_post_s"] = max(a["s"] for a in answers)
    codes = {a["status"] for a in answers}
    r.extra["choice"] = "202" if codes == {202} else "503" if codes == {503} else "mixed"
    accepted = ids + [a["id"] for a in answers if a["id"]]
    r.extra["accepted"] = accepted
    st.wait_finished(accepted, time.time() + m.lost_worker_bound_s)


def judge_broker_down(r: Result, m: Mode) -> None:
    posts = r.extra.get("posts", [])
    r.check(f"each POST answered within {SUBMIT_ANSWER_S:.0f} s",
            bool(posts) and r.extra["max_post_s"] <= SUBMIT_ANSWER_S,
            f"max {r.extra.get('max_post_s')} s")
    r.check("each POST answered 202 or 503", all(a["status"] in (202, 503) for a in posts),
            str([a["status"] for a in posts]))
    accepted = set(r.extra.get("accepted", []))
    bad = [f"{j['id'][:8]} {j['status']}" for j in r.jobs_detail
           if j["id"] in accepted and j["status"] != "succeeded"]
    r.check("every accepted job succeeded", not bad, ", ".join(bad[:6]) or "all")
    left = [j["id"][:8] for j in r.jobs_detail if j["id"] not in accepted]
    r.check("a 503 left no job row", not left, f"{len(left)} rows" + (f": {', '.join(left)}" if left else ""))
    r.check("no job left queued or running", r.unfinished == 0, f"{r.unfinished}")
    _done_within(r, m.lost_worker_bound_s, "Redis coming back", r.extra.get("redis_down_s", 0.0))
    _common(r)


# ------------------------------------------------------------------ 5. postgres restart


def drive_postgres_restart(st: Stack, r: Result, m: Mode) -> None:
    """On a private PostgreSQL cluster, with calls in flight, stop it (fast) for ~8 s while a
    client submits 2 jobs and reads one. The API must answer 503, never 500; after the restart
    the client's retries (same Idempotency-Key) are accepted and every job succeeds."""
    assert st.pg is not None
    ids = st.submit(m.jobs)
    poll(st.in_flight, EVENT_TIMEOUT_S, "provider calls in flight")
    r.fault_at = time.time()
    st.pg.stop("fast")
    keys = [f"chaos-{uuid.uuid4().hex}" for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        calls = []
        for i, key in enumerate(keys):
            at = r.fault_at + 1 + i * 3
            calls.append(_client_at(pool, at, partial(_keyed_post, st, key)))
            calls.append(_client_at(pool, at + 0.5, partial(_timed_get, st, ids[0])))
        _sleep_until(r.fault_at + PG_OUTAGE_S)
        st.pg.start()
        r.extra["pg_down_s"] = round(time.time() - r.fault_at, 2)
        during = [c.result() for c in calls]
    r.extra["during_outage"] = [(d["call"], d["status"]) for d in during]
    # A client retries what was refused, with the same Idempotency-Key.
    accepted = list(ids) + [d["id"] for d in during if d.get("id")]
    for key, d in zip(keys, [d for d in during if d["call"] == "POST"], strict=True):
        if not d.get("id"):
            again = poll(lambda k=key: _accepted(_keyed_post(st, k)), EVENT_TIMEOUT_S,
                         "a resubmission accepted after PostgreSQL is back", interval=0.5)
            accepted.append(again)
    r.extra["accepted"] = accepted
    st.wait_finished(accepted, time.time() + m.lost_worker_bound_s)


def _keyed_post(st: Stack, key: str) -> dict[str, Any]:
    return {"call": "POST", **_timed_post(st, {"Idempotency-Key": key})}


def _timed_get(st: Stack, job_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        status: int | str = st.http.get(f"/v1/jobs/{job_id}", timeout=15).status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return {"call": "GET", "status": status, "s": round(time.perf_counter() - started, 3)}


def _accepted(answer: dict[str, Any]) -> str | None:
    return answer["id"] if answer["status"] in (200, 202) else None


def judge_postgres_restart(r: Result, m: Mode) -> None:
    during = r.extra.get("during_outage", [])
    r.check("the API answered 503 (not 500) while PostgreSQL was down",
            bool(during) and all(s == 503 or (isinstance(s, int) and s < 300)
                                 for _, s in during), str(during))
    _all_succeeded(r)
    _done_within(r, m.lost_worker_bound_s, "PostgreSQL coming back", r.extra.get("pg_down_s", 0.0))
    _common(r)


# ------------------------------------------------------------------ 6. provider chaos


CHAOS_CHAIN = ("anthropic", "google", "groq")


def chaos_stack(m: Mode) -> dict[str, Any]:
    faults = ("--error-rate", "0.3", "--truncate-rate", "0.2")
    return {
        "fakes": (
            FakeSpec("anthropic", "anthropic", (*faults, "--seed", "1")),
            FakeSpec("google", "gemini", (*faults, "--seed", "2")),
            FakeSpec("groq", "groq", (*faults, "--seed", "3", "--tpm", "6000", "--rpm", "30"),
                     {"TPM": "6000", "RPM": "30"}),
        ),
        "env": {"JOB_DEADLINE_S": str(_chaos_deadline_s(m))},
    }


def chaos_jobs(m: Mode) -> int:
    return int(m.pick(20, 6))


def _chaos_deadline_s(m: Mode) -> int:
    return int(m.pick(300, 60))


def drive_provider_chaos(st: Stack, r: Result, m: Mode) -> None:
    """Three fake providers in the chain (anthropic, google, groq flavours), each answering
    30 % 500/503/529 and 20 % truncated JSON, groq also limited to 6,000 TPM. Every job must end
    succeeded or failed (a failed one's error naming each provider) and the ledger must hold
    every token the providers charged."""
    r.fault_at = time.time()  # the faults are there from the first call
    ids = st.submit(chaos_jobs(m))
    st.wait_finished(ids, r.fault_at + _chaos_deadline_s(m) + 30)


def judge_provider_chaos(r: Result, m: Mode) -> None:
    r.check("every job ended succeeded or failed", r.jobs > 0 and r.unfinished == 0,
            f"{r.unfinished} of {r.jobs} still open")
    vague = [j["id"][:8] for j in r.jobs_detail if j["status"] == "failed"
             and not all(p in (j["error"] or "") for p in CHAOS_CHAIN)]
    r.check("a failed job's error names each provider", not vague,
            f"{r.failed} failed" + (f"; not naming them all: {', '.join(vague)}" if vague else ""))
    _common(r)
    _tokens_match(r)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("sigkill", drive_sigkill, judge_sigkill),
    Scenario("sigterm", drive_sigterm, judge_sigterm),
    Scenario("redis_flush_restart", drive_redis_flush, judge_redis_flush, brokers=("redis",)),
    Scenario("broker_down_submit", drive_broker_down, judge_broker_down, brokers=("redis",)),
    Scenario("postgres_restart", drive_postgres_restart, judge_postgres_restart,
             lambda m: {"private_pg": True}),
    Scenario("provider_chaos", drive_provider_chaos, judge_provider_chaos, chaos_stack),
)}
