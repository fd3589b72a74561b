"""Cost ceilings through the HTTP API, a real worker and a priced fake provider: a job whose
estimate does not fit is refused; a running job never sends a call that could take it past its
ceiling and ends `failed` with reason `budget`, keeping what finished; a key past its daily
budget gets 429 until midnight UTC."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from masterplan import budget
from masterplan.db import queries as q
from masterplan.ratelimit.estimate import estimate_tokens
from masterplan.stages import JobInput, pipeline
from tasks.pipeline import enqueue
from testkit.fake_provider import FakeProvider
from tests.integration.conftest import AUTH_A, Stack, fake_env

IDEA = "a marketplace for used lab equipment"
PRICES = {"price_in": "3.0", "price_out": "15.0"}  # USD per million tokens


@pytest.fixture
def priced(make_stack, request) -> Iterator[tuple[Stack, FakeProvider]]:
    with FakeProvider(flavor="groq", api_key="sk-q") as fake:
        env = {**fake_env("groq", fake, **PRICES), "LLM_PROVIDERS": "groq",
               **getattr(request, "param", {})}
        yield make_stack(env), fake


def test_a_job_whose_estimate_does_not_fit_is_refused_and_nothing_is_stored(priced) -> None:
    stack, fake = priced
    estimate = budget.estimate_job_usd(stack.settings, JobInput(IDEA, None))
    assert estimate > 0
    before = len(stack.client.get("/v1/jobs?limit=100", headers=AUTH_A).json()["items"])

    r = stack.client.post("/v1/jobs", json={"idea": IDEA, "max_cost_usd": estimate / 2},
                          headers=AUTH_A)

    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert err["field"] == "max_cost_usd" and budget.usd(estimate) in err["message"]
    assert len(stack.client.get("/v1/jobs?limit=100", headers=AUTH_A).json()["items"]) == before
    assert fake.count() == 0

    ok = stack.client.post("/v1/jobs", json={"idea": IDEA, "max_cost_usd": estimate * 1.01},
                           headers=AUTH_A)
    assert ok.status_code == 202 and ok.json()["max_cost_usd"] == pytest.approx(estimate * 1.01)
    job = stack.wait(ok.json()["id"])
    assert job["status"] == "succeeded"
    assert 0 < job["usage"]["totals"]["cost_usd"] <= estimate * 1.01
    with stack.runtime.sessions() as s:
        assert q.job_spend(s, job_id=job["id"])[1] == pytest.approx(0)  # nothing left held


@pytest.mark.parametrize("priced", [{"SYNTHESIS_MAX_TOKENS": "20000"}], indirect=True)
def test_a_running_job_stops_before_the_call_that_could_pass_its_ceiling(priced) -> None:
    """The five personas' worst cases fit the ceiling together, the synthesis' (20,000 output
    tokens) does not once they are paid. Written to the database directly, as the estimate
    would refuse it (a ceiling lowered, or prices raised, after the job was accepted)."""
    stack, fake = priced
    rt = stack.runtime
    groq = rt.settings.provider("groq")
    market = pipeline()["market"].build(JobInput(IDEA, None), {}, rt.settings)
    persona_worst = groq.cost_usd(estimate_tokens(market.prompt_chars), market.max_tokens)
    with rt.sessions.begin() as s:
        job_id = q.create_job(s, owner=_owner(), idea=IDEA, context=None, deadline_s=120,
                              max_cost_usd=persona_worst * 5.5).id
    enqueue(job_id)

    job = stack.wait(job_id)

    assert job["status"] == "failed"
    assert job["error"].startswith("budget: the next call (groq, up to $")
    with rt.sessions() as s:
        runs = {r.stage: r for r in q.stage_runs(s, job_id=job_id)}
        calls = q.llm_calls(s, job_id=job_id)
        spent, held = q.job_spend(s, job_id=job_id)
    assert all(runs[p].status == "succeeded" and runs[p].output for p in
               ("market", "technical", "finance", "risk", "growth"))
    assert runs["synthesis"].status == "failed" and runs["critique"].status == "failed"
    # No call was sent for the synthesis: five persona calls reached the provider, all paid.
    assert fake.count() == 5 and {c.stage for c in calls} == {
        "market", "technical", "finance", "risk", "growth"}
    assert spent <= persona_worst * 5.5 and held == pytest.approx(0)


def test_a_key_past_its_daily_budget_gets_429_until_midnight(make_stack) -> None:
    with FakeProvider(flavor="groq", api_key="sk-q") as fake:
        key = f"daily-{uuid.uuid4().hex}"
        auth = {"Authorization": f"Bearer {key}"}
        stack: Stack = make_stack({**fake_env("groq", fake, **PRICES), "LLM_PROVIDERS": "groq",
                                   "API_KEYS": key, "KEY_DAILY_BUDGET_USD": "0.000001"})
        first = stack.client.post("/v1/jobs", json={"idea": IDEA}, headers=auth)
        assert first.status_code == 202
        assert stack.wait(first.json()["id"], headers=auth)["status"] == "succeeded"

        r = stack.client.post("/v1/jobs", json={"idea": IDEA}, headers=auth)

        assert r.status_code == 429
        assert "KEY_DAILY_BUDGET_USD" in r.json()["detail"] and "T00:00:00+00:00" in r.json()["detail"]
        assert 1 <= int(r.headers["retry-after"]) <= 86_400


def _owner() -> str:
    from api.deps import owner_of
    from tests.integration.conftest import KEY_A

    return owner_of(KEY_A)
