"""Each fault scenario at the quick size (4-6 jobs, provider latency L = 1 s), on real
processes, with Redis as the broker; the SIGKILL one on RabbitMQ too. What is asserted is what
a user of the system would notice: every job ends, and ends well; nothing is stored or paid
twice; the API answers clearly while a service is away."""

from __future__ import annotations

from typing import Protocol

import pytest

from bench.chaos_measure import Result
from bench.chaos_run import Mode
from bench.chaos_scenarios import CHAOS_CHAIN, REDIS_RECOVERY_S, SUBMIT_ANSWER_S, chaos_jobs

pytestmark = pytest.mark.slow
QUICK = Mode(quick=True)
L = QUICK.latency_s


class Run(Protocol):
    """The `run_quick` fixture: one scenario at the quick size, on Redis unless told."""

    def __call__(self, name: str, broker: str = "redis") -> Result: ...


def every_job_succeeded(r: Result, expected: int) -> None:
    assert r.error is None, r.summary()
    assert r.jobs == expected and r.succeeded == expected, r.summary()


def a_killed_worker_lost_no_job(r: Result) -> None:
    assert r.extra.get("in_flight_at_kill", 0) >= 1, r.summary()
    # Then every job succeeds, the last within 60 s + 3L of the kill
    every_job_succeeded(r, QUICK.jobs)
    assert r.fault_to_done_s is not None and r.fault_to_done_s <= 60 + 3 * L, r.summary()
    # and no stage is stored or paid twice in the ledger (the calls a was making when it died
    # were paid to the provider and never recorded: that is the irreducible double pay)
    assert r.duplicate_outputs == 0 and r.paid_twice == 0, r.summary()
    assert r.holds, r.summary()


def test_a_worker_killed_mid_call_loses_no_job(run_quick: Run) -> None:
    # Given 4 jobs whose persona calls are running, some on worker a
    # When worker a's whole process tree is SIGKILLed
    r = run_quick("sigkill")
    a_killed_worker_lost_no_job(r)


def test_sigkill_on_rabbitmq(rabbitmq: None, run_quick: Run) -> None:
    # The same, with RabbitMQ as the broker (a vhost of the test's own; Redis keeps the limits)
    r = run_quick("sigkill", "rabbitmq")
    assert r.broker == "rabbitmq", r.summary()
    a_killed_worker_lost_no_job(r)


def test_a_worker_stopped_with_sigterm_finishes_its_calls_and_repeats_none(run_quick: Run) -> None:
    # Given worker a is in the middle of persona calls, when it gets SIGTERM (warm shutdown)
    r = run_quick("sigterm")
    # Then it finishes what it was doing and exits 0
    assert r.extra.get("worker_a_exit") == 0 and r.extra.get("warm_shutdown"), r.summary()
    # and every job succeeds with no call repeated and every charged answer delivered
    every_job_succeeded(r, QUICK.jobs)
    assert r.paid_twice == 0 and r.duplicate_outputs == 0, r.summary()
    assert r.undelivered == 0, r.summary()
    assert r.ledger_tokens == r.provider_tokens > 0, r.summary()
    assert r.holds, r.summary()


def test_redis_killed_and_restarted_empty_strands_no_job(run_quick: Run) -> None:
    # When the scenario's redis-server is SIGKILLed mid-run and restarted empty on its port
    # (queues, buckets, cooldowns gone)
    r = run_quick("redis_flush_restart")
    # Then every job succeeds within 120 s of Redis coming back
    every_job_succeeded(r, QUICK.jobs)
    assert r.fault_to_done_s is not None, r.summary()
    assert r.fault_to_done_s - r.extra["redis_down_s"] <= REDIS_RECOVERY_S, r.summary()
    assert r.duplicate_outputs == 0, r.summary()
    assert r.holds, r.summary()


def test_submissions_while_the_broker_is_down_answer_fast_and_are_not_lost(run_quick: Run) -> None:
    # Given 3 jobs in flight, when Redis is stopped for 10 s while a client submits 3 more
    r = run_quick("broker_down_submit")
    assert r.error is None, r.summary()
    posts = r.extra["posts"]
    # Then each POST answers within 1 s, 202 (accepted) or 503 (refused)
    assert len(posts) == 3, r.summary()
    assert all(p["s"] <= SUBMIT_ANSWER_S for p in posts), r.summary()
    assert all(p["status"] in (202, 503) for p in posts), r.summary()
    # and each accepted job later succeeds, while a refused one left no row
    accepted = set(r.extra["accepted"])
    assert {j["id"] for j in r.jobs_detail} == accepted, r.summary()
    assert all(j["status"] == "succeeded" for j in r.jobs_detail), r.summary()
    assert r.unfinished == 0 and r.duplicate_outputs == 0, r.summary()
    assert r.holds, r.summary()


def test_postgres_restart_gets_503s_meanwhile_and_every_job_succeeds_after(run_quick: Run) -> None:
    # Given 4 jobs in flight, when the private PostgreSQL is stopped (fast) for ~8 s while a
    # client submits 2 more and reads one
    r = run_quick("postgres_restart")
    assert r.error is None, r.summary()
    during = r.extra["during_outage"]
    # Then the API answered 503 meanwhile (never a 500), and after the restart the client's
    # retries (same Idempotency-Key) are accepted and every job succeeds
    assert len(during) == 4 and all(status == 503 for _, status in during), r.summary()
    every_job_succeeded(r, QUICK.jobs + 2)
    assert r.duplicate_outputs == 0, r.summary()
    assert r.holds, r.summary()


def test_flaky_providers_end_every_job_and_the_ledger_matches_their_bill(run_quick: Run) -> None:
    # Given three providers in the chain, each answering 30 % 5xx/529 and 20 % truncated JSON,
    # the last one also limited to 6,000 TPM
    r = run_quick("provider_chaos")
    assert r.error is None, r.summary()
    faults = r.extra["faults_injected"]
    assert set(faults) == set(CHAOS_CHAIN), r.summary()
    assert sum(f["error"] for f in faults.values()) > 0, r.summary()
    assert sum(f["truncated"] for f in faults.values()) > 0, r.summary()
    # Then every job ends succeeded or failed, none is left open
    assert r.jobs == chaos_jobs(QUICK) and r.succeeded + r.failed == r.jobs, r.summary()
    assert r.unfinished == 0, r.summary()
    # and a failed one says what each provider's last error was
    for job in r.jobs_detail:
        if job["status"] == "failed":
            assert all(p in (job["error"] or "") for p in CHAOS_CHAIN), job
    # and every token the providers charged is on the ledger, once
    assert r.ledger_tokens == r.provider_tokens > 0, r.summary()
    assert r.duplicate_outputs == 0, r.summary()
    assert r.holds, r.summary()
