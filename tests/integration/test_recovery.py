"""Recovery from the database: lost messages, dead holders, stalls, cancellation — on the real
worker, Redis broker and PostgreSQL. (Killing real processes and services: tests/chaos.)"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from masterplan.db import queries as q
from masterplan.db.models import OPEN, Job, StageRun, utcnow
from masterplan.recovery import sweep
from masterplan.stages import PIPELINE
from tests.integration.conftest import AUTH_A, AUTH_B, Stack

FAST = {"STALL_AFTER_S": "1", "SWEEP_INTERVAL_S": "0.3", "STAGE_LEASE_S": "3"}


@pytest.fixture
def only_our_sweeps(worker: Any) -> Any:
    """Pause the worker's own sweep, so that the test's sweeps are the only ones."""
    from workers import celery_app

    paused = list(celery_app._sweepers)
    for s in paused:
        s.stop()
    yield
    if paused:
        celery_app.start_sweeper()


def _job_without_messages(stack: Stack) -> str:
    """A job whose rows exist but whose messages never reached a worker (an API that died
    after its commit, a broker that lost them)."""
    with stack.runtime.sessions.begin() as s:
        return q.create_job(s, owner="o", idea="an idea", context=None, deadline_s=120).id


def _wait(stack: Stack, job_id: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.runtime.sessions() as s:
            job = q.get_job(s, job_id=job_id)
            assert job is not None
            if job.status not in OPEN:
                return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def _ok_per_stage(stack: Stack, job_id: str) -> Counter[str]:
    return Counter(c.stage for c in stack.calls(job_id) if c.outcome == "ok")


def test_a_job_whose_messages_were_lost_is_redriven_and_succeeds(make_stack) -> None:
    stack: Stack = make_stack(FAST)
    job_id = _job_without_messages(stack)

    job = _wait(stack, job_id)

    assert job.status == "succeeded" and job.redrives == 1
    assert _ok_per_stage(stack, job_id) == Counter(PIPELINE.names)


def test_a_stage_whose_worker_died_is_handed_back_and_its_lost_call_is_on_the_ledger(make_stack) -> None:
    stack: Stack = make_stack({**FAST, "STUB_LATENCY_MS": "50"})
    job_id = _job_without_messages(stack)
    # What a SIGKILLed worker leaves behind: a claim nobody renews.
    with stack.runtime.sessions.begin() as s:
        assert q.claim_stage(s, job_id=job_id, stage="risk", claim_id="dead-worker",
                             lease_s=0.5).state == "claimed"

    job = _wait(stack, job_id)

    assert job.status == "succeeded"
    calls = stack.calls(job_id)
    assert [c.outcome for c in calls if c.stage == "risk"] == ["lost", "ok"]
    assert _ok_per_stage(stack, job_id) == Counter(PIPELINE.names)


def test_a_healthy_job_is_left_alone_by_sweeps_from_many_processes_at_once(
        make_stack, only_our_sweeps) -> None:
    stack: Stack = make_stack({"STUB_LATENCY_MS": "300", "STALL_AFTER_S": "1"})
    sent: list[tuple[str, tuple[str, ...]]] = []
    ids = [stack.submit(f"idea {i}") for i in range(3)]
    stop = threading.Event()

    def sweeping() -> None:
        while not stop.is_set():
            sweep(stack.runtime, lambda job_id, stages: sent.append((job_id, tuple(stages))))

    threads = [threading.Thread(target=sweeping) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        jobs = [stack.wait(i) for i in ids]
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert sent == []  # nothing was re-published: every job kept moving
    for i in ids:
        assert _ok_per_stage(stack, i) == Counter(PIPELINE.names)
        with stack.runtime.sessions() as s:
            assert q.get_job(s, job_id=i).redrives == 0  # type: ignore[union-attr]


def test_a_job_that_never_moves_fails_after_the_last_redrive(make_stack, only_our_sweeps) -> None:
    # A broker that takes every message and delivers none.
    stack: Stack = make_stack({"STALL_AFTER_S": "0.05", "MAX_REDRIVES": "3"})
    with stack.runtime.sessions.begin() as s:
        job = q.create_job(s, owner="o", idea="an idea", context=None, deadline_s=120)
        s.execute(sa.update(Job).where(Job.id == job.id)
                  .values(created_at=utcnow() - timedelta(seconds=5)))
    published: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sweep(stack.runtime, lambda job_id, stages: published.append(job_id))
        with stack.runtime.sessions() as s:
            j = q.get_job(s, job_id=job.id)
            assert j is not None
            if j.status not in OPEN:
                break
        time.sleep(0.05)

    assert j.status == "failed" and "no progress after 3 re-drives" in (j.error or "")
    assert published == [job.id] * 3
    with stack.runtime.sessions() as s:
        assert {r.status for r in q.stage_runs(s, job_id=job.id)} == {"failed"}  # said why


def test_a_job_past_its_deadline_is_ended_by_the_sweep(make_stack, only_our_sweeps) -> None:
    stack: Stack = make_stack()
    with stack.runtime.sessions.begin() as s:
        job = q.create_job(s, owner="o", idea="an idea", context=None, deadline_s=0)

    report = sweep(stack.runtime, lambda *_: None)

    assert job.id in report.overdue
    with stack.runtime.sessions() as s:
        j = q.get_job(s, job_id=job.id)
        assert j is not None and j.status == "failed" and j.error == "job deadline passed"


def test_cancel_stops_new_calls_keeps_what_finished_and_is_owner_only(make_stack) -> None:
    stack: Stack = make_stack({"STUB_LATENCY_MS": "700", "MIN_PERSONAS": "1"})
    job_id = stack.submit()
    # once the personas are running
    deadline = time.monotonic() + 20
    while True:
        with stack.runtime.sessions() as s:
            if any(r.status == "running" for r in q.stage_runs(s, job_id=job_id)):
                break
        assert time.monotonic() < deadline
        time.sleep(0.02)

    assert stack.client.delete(f"/v1/jobs/{job_id}", headers=AUTH_B).status_code == 404
    r = stack.client.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    cancelled_at = utcnow()

    # the running calls finish and are recorded; the synthesis and critique never start
    deadline = time.monotonic() + 20
    while True:
        with stack.runtime.sessions() as s:
            runs = {r.stage: r for r in q.stage_runs(s, job_id=job_id)}
        if all(r.status != "running" for r in runs.values()):
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # (cancelled rows cannot be claimed: nothing published later could start them)
    assert runs["synthesis"].status == runs["critique"].status == "cancelled"
    calls = stack.calls(job_id)
    assert not [c for c in calls if c.stage in ("synthesis", "critique")]
    assert {r.stage for r in runs.values() if r.status == "succeeded"} == {c.stage for c in calls
                                                                          if c.outcome == "ok"}
    # no stage was claimed after the cancellation
    assert all(r.claimed_at is None or r.claimed_at.replace(tzinfo=cancelled_at.tzinfo) < cancelled_at
               for r in runs.values())
    job = stack.wait(job_id)
    assert job["status"] == "cancelled"
    again = stack.client.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    with stack.runtime.sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(StageRun)
                        .where(StageRun.job_id == job_id, StageRun.status == "running")) == 0
