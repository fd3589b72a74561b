"""A dead endpoint opens its circuit: a job whose first provider answers 503 to everything and
whose second never gives valid output ends `failed` with every provider's reason, well before
its deadline, instead of asking the dead one again every few seconds until the deadline.

Through the API and a real worker (tests/integration/conftest.py), on PostgreSQL and Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from testkit.fake_provider import FakeProvider
from tests.integration.conftest import AUTH_A, Stack, fake_env

DEADLINE_S = 240


@pytest.fixture
def dead_then_garbage(make_stack) -> Iterator[tuple[Stack, FakeProvider, FakeProvider]]:
    with FakeProvider(flavor="gemini", api_key="sk-g") as dead, \
            FakeProvider(flavor="groq", api_key="sk-q") as garbage:
        dead.fail_next(100_000, status=503)  # no Retry-After: a dead endpoint
        garbage.set_mode("invalid_json")
        env = {"LLM_PROVIDERS": "google,groq", **fake_env("google", dead),
               **fake_env("groq", garbage), "JOB_DEADLINE_S": str(DEADLINE_S)}
        env["GOOGLE_BASE_URL"] = dead.url + "/v1beta/openai/"
        yield make_stack(env), dead, garbage


def test_a_dead_first_provider_and_a_useless_second_fail_the_job_with_reasons(
        dead_then_garbage) -> None:
    stack, dead, garbage = dead_then_garbage
    started = time.monotonic()

    job = stack.wait(stack.submit(), timeout=90)

    assert job["status"] == "failed"
    assert time.monotonic() - started < DEADLINE_S / 3  # its reasons, not the deadline
    assert "deadline" not in job["error"]
    assert "only 0 of 5 personas succeeded" in job["error"]
    for persona in job["personas"]:
        assert persona["status"] == "failed"
        assert "all providers failed" in persona["error"]
        assert "google:" in persona["error"] and "groq: invalid_output" in persona["error"]
    calls = stack.calls(job["id"])
    google = [c for c in calls if c.provider == "google"]
    # The circuit opened after CIRCUIT_FAILURES (3) in a row, give or take the calls already
    # in flight then; every later step skipped the dead provider without calling it.
    assert {c.outcome for c in google} <= {"overloaded", "skipped_cooldown"}
    assert dead.count() <= 8 < len(google)
    skipped = [c for c in google if c.outcome == "skipped_cooldown"]
    assert all("circuit open" in (c.error or "") for c in skipped)
    assert not [c for c in calls if c.outcome == "deferred"]  # nobody waited for it
    # GET /v1/providers shows the open circuit, and when it is probed next.
    primary = stack.client.get("/v1/providers", headers=AUTH_A).json()["providers"][0]
    assert primary["circuit"] == "open" and primary["cooldown_until"] is not None
    assert primary["cooldown_reason"].startswith("circuit_open: open 30 s")
