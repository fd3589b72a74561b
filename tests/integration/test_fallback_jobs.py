"""Done means: with three local fake providers as anthropic, google and groq, a job survives the
primary being down, rate limited or returning garbage; the ledger says exactly what happened;
GET /v1/providers shows the cooldowns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.fake_provider import FakeProvider
from tests.integration.conftest import AUTH_A, Stack, fake_env

PERSONAS = ("market", "technical", "finance", "risk", "growth")


@pytest.fixture
def chain(make_stack) -> Iterator[tuple[Stack, dict[str, FakeProvider]]]:
    with FakeProvider(flavor="anthropic", api_key="sk-a") as a, \
            FakeProvider(flavor="gemini", api_key="sk-g") as g, \
            FakeProvider(flavor="groq", api_key="sk-q") as q:
        env = {**fake_env("anthropic", a, kind="anthropic"), **fake_env("google", g),
               **fake_env("groq", q)}
        env["GOOGLE_BASE_URL"] = g.url + "/v1beta/openai/"
        yield make_stack(env), {"anthropic": a, "google": g, "groq": q}


def test_primary_down_every_persona_is_served_by_the_fallback(chain) -> None:
    stack, fakes = chain
    fakes["anthropic"].set_mode("down")

    job = stack.wait(stack.submit())

    assert job["status"] == "succeeded" and job["degraded"]
    assert {p["provider"] for p in job["personas"]} == {"google"}
    calls = stack.calls(job["id"])
    ok = [c for c in calls if c.outcome == "ok"]
    assert len(ok) == 7 and {c.provider for c in ok} == {"google"}
    assert all(c.fallback_from == "anthropic" for c in ok)
    failed = [c for c in calls if c.provider == "anthropic"]
    assert failed and {c.outcome for c in failed} <= {"timeout", "skipped_cooldown"}
    assert fakes["groq"].count() == 0


def test_primary_rate_limited_overflows_and_providers_show_the_cooldown(chain) -> None:
    stack, fakes = chain
    fakes["anthropic"].fail_next(status=429, retry_after_s=120)

    job = stack.wait(stack.submit())

    assert job["status"] == "succeeded"
    calls = stack.calls(job["id"])
    assert [c.outcome for c in calls if c.provider == "anthropic"].count("rate_limited") == 1
    limited = next(c for c in calls if c.outcome == "rate_limited")
    assert next(c for c in calls if c.stage == limited.stage and c.outcome == "ok").provider == "google"
    # Personas already in flight may have reached the primary; every later call skips it.
    for stage in ("synthesis", "critique"):
        assert [(c.provider, c.outcome) for c in calls if c.stage == stage] == [
            ("anthropic", "skipped_cooldown"), ("google", "ok")]
    assert fakes["anthropic"].count() <= 5
    providers = stack.client.get("/v1/providers", headers=AUTH_A).json()
    assert providers["chain"] == ["anthropic", "google", "groq"]
    primary = providers["providers"][0]
    assert primary["cooldown_until"] is not None
    assert primary["cooldown_reason"].startswith("rate_limited")
    assert providers["providers"][1]["cooldown_until"] is None
    assert providers["providers"][1]["bucket"]["token_capacity"] == 10_000_000


def test_primary_returning_garbage_is_repaired_once_then_replaced(chain) -> None:
    stack, fakes = chain
    fakes["anthropic"].set_mode("invalid_json")

    job = stack.wait(stack.submit())

    assert job["status"] == "succeeded"
    calls = stack.calls(job["id"])
    for stage in (*PERSONAS, "synthesis", "critique"):
        outcomes = [(c.provider, c.outcome) for c in calls if c.stage == stage]
        assert outcomes == [("anthropic", "invalid_output"), ("anthropic", "invalid_output"),
                            ("google", "ok")], (stage, outcomes)


def test_all_real_providers_failing_fails_the_job_without_a_silent_stub(chain) -> None:
    stack, fakes = chain
    for f in fakes.values():
        f.set_mode("invalid_json")

    job = stack.wait(stack.submit())

    assert job["status"] == "failed"
    assert "only 0 of 5 personas succeeded" in job["error"]
    assert all(p["provider"] is None for p in job["personas"])
    assert "stub" not in {c.provider for c in stack.calls(job["id"])}
