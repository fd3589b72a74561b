"""Personas that fail, deliveries that repeat: the chord still ends in a stored, honest job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from masterplan.testing.fake_provider import FakePrompt, FakeProvider, default_responder
from tests.integration.conftest import Stack, fake_env

TITLES = {"market": "Market & customers", "technical": "Technical architect",
          "finance": "Finance & unit economics", "risk": "Risk, legal & security"}


def garbage_for(*personas: str):
    """A responder that answers these personas with text that is not JSON, every time."""
    def respond(prompt: FakePrompt):
        if any(TITLES[p] in prompt.system for p in personas):
            return "I'd rather write prose than JSON."
        return default_responder(prompt)
    return respond


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(flavor="groq", api_key="sk-fake") as f:
        yield f


def test_one_failing_persona_still_gets_a_masterplan(make_stack, fake) -> None:
    fake.responder = garbage_for("finance")
    stack: Stack = make_stack({"LLM_PROVIDERS": "groq", **fake_env("groq", fake)})

    job = stack.wait(stack.submit())

    assert job["status"] == "succeeded"
    runs = {p["persona"]: p for p in job["personas"]}
    assert runs["finance"]["status"] == "failed"
    assert "invalid_output" in runs["finance"]["error"]
    assert all(runs[p]["status"] == "succeeded" for p in ("market", "technical", "risk", "growth"))
    assert job["synthesis"] and job["critique"]
    finance_calls = [c for c in stack.calls(job["id"]) if c.stage == "finance"]
    # The first answer, then exactly one repair attempt, both recorded.
    assert [c.outcome for c in finance_calls] == ["invalid_output", "invalid_output"]


def test_three_failing_personas_fail_the_job_and_keep_the_rest(make_stack, fake) -> None:
    fake.responder = garbage_for("market", "technical", "risk")
    stack: Stack = make_stack({"LLM_PROVIDERS": "groq", **fake_env("groq", fake)})

    job = stack.wait(stack.submit())

    assert job["status"] == "failed"
    assert "only 2 of 5 personas succeeded (need 3)" in job["error"]
    for p in ("market", "technical", "risk"):
        assert f"{p}:" in job["error"]
    runs = {p["persona"]: p for p in job["personas"]}
    assert runs["finance"]["output"]["summary"] and runs["growth"]["output"]["summary"]
    assert job["synthesis"] is None and job["critique"] is None
    assert not [c for c in stack.calls(job["id"]) if c.stage in ("synthesis", "critique")]


def test_min_personas_is_configurable(make_stack, fake) -> None:
    fake.responder = garbage_for("market", "technical", "risk")
    stack: Stack = make_stack({"LLM_PROVIDERS": "groq", "MIN_PERSONAS": "2",
                               **fake_env("groq", fake)})
    assert stack.wait(stack.submit())["status"] == "succeeded"


def test_a_persona_task_delivered_twice_calls_the_llm_once(make_stack, fake) -> None:
    from tasks.pipeline import persona

    stack: Stack = make_stack({"LLM_PROVIDERS": "groq", **fake_env("groq", fake)})
    job = stack.wait(stack.submit())
    before = fake.count()

    again = persona.apply_async(kwargs={"job_id": job["id"], "persona": "market"}).get(timeout=10)

    assert again == {"stage": "market", "status": "succeeded"}
    assert fake.count() == before
    market = [c for c in stack.calls(job["id"]) if c.stage == "market"]
    assert len(market) == 1
    assert len([p for p in stack.wait(job["id"])["personas"] if p["persona"] == "market"]) == 1


def test_synthesis_waits_for_personas_the_database_says_are_running(make_stack) -> None:
    """A redelivered header task can make the chord fire early; synthesis checks the database."""
    from masterplan.db import queries as q
    from masterplan.db.models import RunStatus
    from tasks.pipeline import synthesize

    stack: Stack = make_stack()
    with stack.runtime.sessions.begin() as s:
        job = q.create_job(s, owner="t", idea="an idea", context=None, deadline_s=60)
    result = synthesize.apply_async(kwargs={"job_id": job.id})
    # Nothing is finished: synthesis retries itself instead of running on nothing.
    import time

    time.sleep(1.5)
    with stack.runtime.sessions() as s:
        assert q.get_job(s, job_id=job.id).synthesis is None
    from tasks.pipeline import persona
    for p in ("market", "technical", "finance", "risk", "growth"):
        persona.apply_async(kwargs={"job_id": job.id, "persona": p}).get(timeout=10)
    assert result.get(timeout=15) == {"stage": "synthesis", "status": "succeeded"}
    with stack.runtime.sessions() as s:
        assert q.get_job(s, job_id=job.id).synthesis is not None
        assert all(r.status == RunStatus.SUCCEEDED.value for r in q.persona_runs(s, job_id=job.id))


def test_a_transient_error_on_every_provider_is_retried_within_the_error_budget(make_stack, fake) -> None:
    stack: Stack = make_stack({"LLM_PROVIDERS": "groq", "MIN_PERSONAS": "5", **fake_env("groq", fake)})
    fake.fail_next(1, status=500)

    job = stack.wait(stack.submit(), timeout=60)

    assert job["status"] == "succeeded"
    calls = stack.calls(job["id"])
    failed = [c for c in calls if c.outcome == "server_error"]
    assert len(failed) == 1
    retried = [c for c in calls if c.stage == failed[0].stage]
    assert [c.outcome for c in retried] == ["server_error", "ok"]
    assert retried[1].created_at > retried[0].created_at
