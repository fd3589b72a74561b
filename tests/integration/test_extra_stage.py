"""Adding a stage is one declaration, its prompt and its schema: a job runs through it on the
real worker, and the API, the ledger and the job's end follow from the declaration alone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pydantic import BaseModel, Field

from masterplan.llm.base import LLMRequest, Message, json_instructions
from masterplan.settings import Settings
from masterplan.stages import STAGES, JobInput, Kind, Pipeline, StageDef, use_pipeline
from tests.integration.conftest import Stack


class Pitch(BaseModel):
    one_liner: str = Field(min_length=1)
    audience: str
    confidence: int = Field(ge=0, le=10)


def pitch_request(job: JobInput, found: Mapping[str, dict[str, Any]], settings: Settings) -> LLMRequest:
    return LLMRequest(
        system="You write the elevator pitch that survives the devil's advocate."
        + json_instructions(Pitch),
        messages=(Message("user", f"Startup idea:\n{job.idea}\n\nVerdict:\n{found['critique']}"),),
        max_tokens=200, schema=Pitch)


@pytest.fixture
def with_pitch() -> Iterator[None]:
    pitch = StageDef("pitch", "Elevator pitch", Kind.CRITIQUE, pitch_request, needs=("critique",))
    use_pipeline(Pipeline((*STAGES, pitch)))
    yield
    use_pipeline(Pipeline(STAGES))


def test_a_declared_extra_stage_runs_after_what_it_needs_and_ends_the_job(make_stack, with_pitch) -> None:
    stack: Stack = make_stack({"STUB_LATENCY_MS": "20"})

    job = stack.wait(stack.submit("a marketplace for used lab equipment"))

    assert job["status"] == "succeeded"
    names = [s["stage"] for s in job["stages"]]
    assert names == ["market", "technical", "finance", "risk", "growth", "synthesis", "critique",
                     "pitch"]
    pitch = job["stages"][-1]
    assert pitch["status"] == "succeeded" and pitch["title"] == "Elevator pitch"
    assert Pitch.model_validate(pitch["output"]).one_liner
    calls = {c.stage: c for c in stack.calls(job["id"]) if c.outcome == "ok"}
    assert set(calls) == set(names)
    # it ran after the stage it needs, and the job ended only when it did
    assert calls["pitch"].created_at >= calls["critique"].created_at
    assert job["usage"]["by_stage"][-1]["stage"] == "pitch"
