"""Fair share across keys: the order waiting jobs are let in (pure), then `release` on a real
database (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from masterplan import admission
from masterplan.admission import FIRST, MORE, plan
from masterplan.db import queries as q
from masterplan.db.models import JobStatus, utcnow
from masterplan.db.session import make_engine, make_sessionmaker, upgrade
from tests.conftest import make_settings


def test_each_slot_goes_to_the_key_with_the_fewest_jobs_in_flight() -> None:
    waiting = [(f"a{i}", "A") for i in range(5)] + [("b0", "B"), ("c0", "C"), ("b1", "B")]
    chosen = plan({"A": 3, "B": 1}, waiting, per_key=4, total_cap=7)
    # C has nothing in flight, then B (1) and A (3) take turns as they draw level.
    assert chosen == [("c0", FIRST), ("b0", MORE), ("b1", MORE)]


def test_a_tie_goes_to_the_oldest_waiting_job_and_a_key_keeps_its_own_order() -> None:
    waiting = [("a0", "A"), ("b0", "B"), ("a1", "A"), ("b1", "B"), ("a2", "A")]
    chosen = plan({}, waiting, per_key=10, total_cap=None)
    assert [j for j, _ in chosen] == ["a0", "b0", "a1", "b1", "a2"]
    assert dict(chosen) == {"a0": FIRST, "b0": FIRST, "a1": MORE, "b1": MORE, "a2": MORE}


def test_the_caps_hold() -> None:
    waiting = [(f"a{i}", "A") for i in range(5)] + [("b0", "B")]
    assert [j for j, _ in plan({"A": 1}, waiting, per_key=2, total_cap=None)] == ["b0", "a0"]
    assert plan({"A": 2, "B": 1}, waiting, per_key=2, total_cap=3) == []
    assert plan({"A": 2}, waiting, per_key=2, total_cap=3) == [("b0", FIRST)]


@pytest.fixture
def runtime_on(any_db_url: str) -> Iterator[Callable[..., Any]]:
    """What `release` needs of a runtime, on a migrated database, with settings from `env`."""
    engine = make_engine(any_db_url)
    upgrade(engine)

    def make(**env: str) -> Any:
        return SimpleNamespace(settings=make_settings({"DATABASE_URL": any_db_url, **env}),
                               sessions=make_sessionmaker(engine))

    yield make
    engine.dispose()


def _submit(rt: Any, owner: str, released: list[str] | None = None) -> str:
    """What POST /v1/jobs does with the database: store, then (if it waits) release."""
    with rt.sessions.begin() as s:
        slot = admission.slot_for_new_job(s, rt.settings, owner)
        job_id = q.create_job(s, owner=owner, idea="an idea", context=None, deadline_s=60,
                              admitted=slot.admitted, lane=slot.lane).id
    let_in = [job_id] if slot.admitted else admission.release(rt)
    if released is not None:
        released += let_in
    return job_id


def _end(rt: Any, job_id: str) -> None:
    with rt.sessions.begin() as s:
        q.update_job(s, job_id=job_id, status=JobStatus.SUCCEEDED.value, finished_at=utcnow())


def test_release_lets_the_newcomer_in_before_the_flood(runtime_on: Callable[..., Any]) -> None:
    rt = runtime_on(KEY_MAX_JOBS_IN_FLIGHT="2", MAX_JOBS_IN_FLIGHT="3")
    flood = [_submit(rt, "A") for _ in range(6)]
    newcomer = _submit(rt, "B")
    with rt.sessions() as s:
        jobs = {j: q.get_job(s, job_id=j) for j in [*flood, newcomer]}
    admitted = [j for j, job in jobs.items() if job.admitted_at is not None]
    assert admitted == flood[:2] + [newcomer]  # A's cap, then the system's
    assert (jobs[flood[0]].lane, jobs[flood[1]].lane, jobs[newcomer].lane) == (FIRST, MORE, FIRST)
    assert admission.release(rt) == []  # no slot is free

    _end(rt, flood[0])
    assert admission.release(rt) == [flood[2]]
    assert admission.release(rt) == []
    _end(rt, newcomer)
    _end(rt, flood[1])
    released: list[str] = []
    later = _submit(rt, "C", released)  # C has nothing in flight: first, then A's next
    assert released == [later, flood[3]]
    with rt.sessions() as s:
        waiting = q.get_job(s, job_id=flood[4])
        assert waiting.status == "queued" and waiting.admitted_at is None
        # A waiting job is neither stalled nor overdue: recovery leaves it alone.
        assert flood[4] not in q.overdue_jobs(s)
        assert flood[4] not in dict(q.stalled_jobs(s, stall_s=0))


def test_submissions_per_minute_say_when_the_next_is_accepted(runtime_on: Callable[..., Any]) -> None:
    rt = runtime_on(KEY_SUBMISSIONS_PER_MIN="3")
    for _ in range(3):
        with rt.sessions.begin() as s:
            assert admission.retry_after_s(s, rt.settings, "A") is None
        _submit(rt, "A")
    with rt.sessions() as s:
        wait = admission.retry_after_s(s, rt.settings, "A")
        assert wait is not None and 55 <= wait <= 60
        assert admission.retry_after_s(s, rt.settings, "B") is None
    off = runtime_on(KEY_SUBMISSIONS_PER_MIN="0")
    with off.sessions() as s:
        assert admission.retry_after_s(s, off.settings, "A") is None


def test_a_keys_further_jobs_leave_the_headroom_to_first_jobs() -> None:
    """Through the router, on a limited provider: a call with headroom waits where a first job's
    call of the same size goes ahead."""
    import fakeredis

    from masterplan import errors as E
    from masterplan.llm.base import LLMRequest, Message
    from masterplan.llm.registry import build_router

    settings = make_settings({"LLM_PROVIDERS": "stub", "STUB_TPM": "10000", "STUB_RPM": "1000"})
    router = build_router(settings, fakeredis.FakeRedis())
    assert router.limiter.reserve("stub", 8000).granted  # 2,000 tokens left
    request = LLMRequest("You are terse.", (Message("user", "an idea"),), max_tokens=500)

    with pytest.raises(E.RetryLater) as waited:
        router.route(replace(request, headroom=settings.fair_headroom))  # must leave 2,000
    assert waited.value.wait_ms > 0
    assert router.route(request).completion.provider == "stub"


def test_the_headroom_is_kept_only_while_other_keys_have_open_jobs(
        runtime_on: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    rt = runtime_on(FAIR_HEADROOM="0.2")
    monkeypatch.setattr(admission, "CONTENDED_TTL_S", 0.0)  # ask every time
    _submit(rt, "A")
    assert admission.headroom(rt, MORE) == 0.0  # a single tenant keeps the whole bucket
    other = _submit(rt, "B")
    assert admission.headroom(rt, MORE) == 0.2
    assert admission.headroom(rt, FIRST) == 0.0
    _end(rt, other)
    assert admission.headroom(rt, MORE) == 0.2  # B submitted within FAIR_WINDOW_S
    quiet = runtime_on(FAIR_HEADROOM="0.2", FAIR_WINDOW_S="0")
    assert admission.headroom(quiet, MORE) == 0.0  # ... and not once the window has passed
