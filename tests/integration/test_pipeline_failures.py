"""Personas that fail, deliveries that repeat: the pipeline still ends in a stored, honest job."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from masterplan.stages import PIPELINE, Kind
from testkit.fake_provider import FakePrompt, FakeProvider, default_responder
from tests.integration.conftest import Stack, fake_env

TITLES = {"market": "Market & customers", "technical": "Technical architect",
          "finance": "Finance & unit economics", "risk": "Risk, legal & security"}


def garbage_for(*personas: str):
    """A responder that answers these personas with text that is not JSON, every time."""
    def respond(prompt: FakePrompt):
        brief = prompt.messages[0][1] if prompt.messages else ""  # "You are the <title> ..."
        if any(TITLES[p] in brief for p in personas):
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


def _run_stage_task(job_id: str, stage: str) -> dict[str, Any]:
    """Deliver one stage task through the broker and wait for what it returned."""
    from tasks.pipeline import stage as stage_task

    return stage_task.apply_async(  # type: ignore[no-any-return]
        kwargs={"job_id": job_id, "stage": stage}, queue=PIPELINE[stage].queue,
        ignore_result=False).get(timeout=15)


def test_a_persona_task_delivered_twice_calls_the_llm_once(make_stack, fake) -> None:
    stack: Stack = make_stack({"LLM_PROVIDERS": "groq", **fake_env("groq", fake)})
    job = stack.wait(stack.submit())
    before = fake.count()

    again = _run_stage_task(job["id"], "market")

    assert again == {"stage": "market", "status": "closed", "ready": []}  # the job has ended
    assert fake.count() == before
    market = [c for c in stack.calls(job["id"]) if c.stage == "market"]
    assert len(market) == 1
    assert len([p for p in stack.wait(job["id"])["personas"] if p["persona"] == "market"]) == 1


def test_a_synthesis_delivered_before_its_personas_finished_does_not_run(make_stack) -> None:
    """Only the database says whether the personas are done; an early synthesis hands its
    claim back, and the last persona to finish publishes it."""
    from masterplan.db import queries as q
    from masterplan.db.models import RunStatus
    from tasks.pipeline import publish

    stack: Stack = make_stack()
    with stack.runtime.sessions.begin() as s:
        job = q.create_job(s, owner="t", idea="an idea", context=None, deadline_s=60)

    assert _run_stage_task(job.id, "synthesis") == {"stage": "synthesis", "status": "not_ready",
                                                    "ready": []}
    assert not stack.calls(job.id)
    with stack.runtime.sessions() as s:
        assert {r.stage: r.status for r in q.stage_runs(s, job_id=job.id)}["synthesis"] == "pending"

    publish(job.id, PIPELINE.of_kind(Kind.PERSONA))
    done = _wait_status(stack, job.id)
    assert done == "succeeded"
    with stack.runtime.sessions() as s:
        assert all(r.status == RunStatus.SUCCEEDED.value for r in q.stage_runs(s, job_id=job.id))
    ok = Counter(c.stage for c in stack.calls(job.id) if c.outcome == "ok")
    assert ok == Counter(PIPELINE.names)  # each stage answered once


def _wait_status(stack: Stack, job_id: str, timeout: float = 30) -> str:
    from masterplan.db import queries as q
    from masterplan.db.models import OPEN

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with stack.runtime.sessions() as s:
            status = q.get_job(s, job_id=job_id).status  # type: ignore[union-attr]
        if status not in OPEN:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {status} after {timeout} s")


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
