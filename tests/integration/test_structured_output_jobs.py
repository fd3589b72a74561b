"""Whole jobs through the API and a real worker when the first provider does not give what the
schema asks for: a model that ignores formatting even under a schema or a forced tool, or an
honest one asked in JSON mode only. Each stage is repaired once, then answered by the next
provider, whose strict json_schema the honest fake fits; the ledger says so."""

from __future__ import annotations

import pytest

from testkit.fake_provider import FakeProvider
from tests.integration.conftest import Stack, fake_env

STAGES = ("market", "technical", "finance", "risk", "growth", "synthesis", "critique")


@pytest.mark.parametrize(("primary", "kind", "setup"), [
    ("anthropic", "anthropic", {"ignore_instructions": True}),  # forced tool, ignored
    ("groq", "openai", {"ignore_instructions": True}),  # json_schema, ignored
    ("groq", "openai", {"structured_output": "json_object"}),  # honest, but JSON mode only
], ids=["tool-ignored", "json-schema-ignored", "json-mode-only"])
def test_a_primary_that_does_not_fit_the_schema_is_repaired_then_replaced(
        make_stack, primary: str, kind: str, setup: dict[str, object]) -> None:
    flavor = "anthropic" if kind == "anthropic" else "groq"
    ignores = bool(setup.get("ignore_instructions"))
    with FakeProvider(flavor=flavor, api_key="sk-p", ignore_instructions=ignores) as first, \
            FakeProvider(flavor="gemini", api_key="sk-g") as google:
        extra = {"structured_output": str(setup["structured_output"])} \
            if "structured_output" in setup else {}
        env = {"LLM_PROVIDERS": f"{primary},google", **fake_env(primary, first, kind=kind, **extra),
               **fake_env("google", google), "GOOGLE_BASE_URL": google.url + "/v1beta/openai/"}
        stack: Stack = make_stack(env)

        job = stack.wait(stack.submit())

        assert job["status"] == "succeeded", job
        assert {s["provider"] for s in job["stages"]} == {"google"}
        calls = stack.calls(job["id"])
        for stage in STAGES:
            rows = [(c.provider, c.outcome, c.fallback_from) for c in calls if c.stage == stage]
            assert rows == [(primary, "invalid_output", None), (primary, "invalid_output", None),
                            ("google", "ok", primary)], (stage, rows)
        # the primary was asked in its mode, and its repair in the same one
        sent = first.calls
        assert len(sent) == 2 * len(STAGES)
        if kind == "anthropic":
            assert all(c.body["tool_choice"]["type"] == "tool" for c in sent)
        else:
            want = "json_object" if "structured_output" in setup else "json_schema"
            assert {c.body["response_format"]["type"] for c in sent} == {want}
        assert {c.body["response_format"]["type"] for c in google.calls} == {"json_schema"}
        assert all(c.body["response_format"]["json_schema"]["strict"] for c in google.calls)
