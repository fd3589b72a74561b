"""Request and response schemas, kept apart from the table models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.validation import IDEA_PATTERN, MAX_ANSWER_CHARS, MAX_IDEA_CHARS, text_problem

EXAMPLES = {
    "idea": {"summary": "An idea alone", "value": {"idea": "bike repair subscriptions"}},
    "with_context": {
        "summary": "An idea with the founder's interview answers",
        "value": {"idea": "a marketplace for used lab equipment",
                  "context": {"budget": "50k", "team": ["a chemist", "a developer"],
                              "market": {"region": "EU", "buyers": "university labs"}}},
    },
}


def _text(v: str, limit: int) -> str:
    if len(v) > limit:
        raise ValueError(f"is {len(v)} characters; the limit is {limit}")
    if (why := text_problem(v)) is not None:
        raise ValueError(why)
    v = v.strip()
    if not v:
        raise ValueError("must not be empty or only whitespace")
    return v


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The length and pattern are checked by the validator below (messages that say what to
    # fix); the schema states the same rules for clients.
    idea: str = Field(
        description="The startup idea: 1 to 20,000 characters, not only whitespace (surrounding "
        "whitespace is removed), without NUL or unpaired surrogates.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_IDEA_CHARS, "pattern": IDEA_PATTERN},
    )
    context: dict[str, Any] | None = Field(
        None, description="Optional founder context, e.g. interview answers."
    )
    max_cost_usd: float | None = Field(
        None, gt=0, le=1_000_000, allow_inf_nan=False,
        description="The job's cost ceiling in USD (default JOB_MAX_COST_USD; none: no ceiling). "
        "A job whose estimate does not fit is refused with a 422 that says the estimate; no call "
        "is sent that could take the job past it, and a job that would need one ends `failed` "
        "with reason `budget`, keeping what finished.")

    @field_validator("idea")
    @classmethod
    def _idea(cls, v: str) -> str:
        return _text(v, MAX_IDEA_CHARS)


class RunPublic(BaseModel):
    """One stage's run: what both views of it (a persona, any stage) show."""

    status: str
    provider: str | None
    model: str | None
    attempts: int
    error: str | None
    latency_ms: int | None
    output: dict[str, Any] | None


class PersonaPublic(RunPublic):
    persona: str


class StagePublic(RunPublic):
    stage: str
    title: str
    kind: str


_CACHED = ("Of input_tokens, those read from the provider's prompt cache (the prefix the "
           "personas share), priced at its cached-input rate.")
_WRITTEN = ("Of input_tokens, those written to the provider's prompt cache (Anthropic), priced "
            "at its cache-write rate.")


class StageUsage(BaseModel):
    stage: str
    provider: str
    calls: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = Field(0, description=_CACHED)
    cache_write_tokens: int = Field(0, description=_WRITTEN)
    cost_usd: float
    wait_ms: int
    failed_attempts: int
    wasted_cost_usd: float = Field(description="What this stage's attempts that gave nothing "
                                   "cost: invalid output (repaired or not), errors, lost calls.")


class UsageTotals(BaseModel):
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = Field(0, description=_CACHED)
    cache_write_tokens: int = Field(0, description=_WRITTEN)
    cost_usd: float
    wasted_cost_usd: float
    wait_ms: int


class Usage(BaseModel):
    by_stage: list[StageUsage]
    totals: UsageTotals


class JobSummary(BaseModel):
    id: str
    status: str
    idea: str
    created_at: datetime
    finished_at: datetime | None
    error: str | None


class JobPublic(JobSummary):
    context: dict[str, Any] | None
    max_cost_usd: float | None = Field(description="The job's cost ceiling in USD, if any.")
    admitted_at: datetime | None = Field(
        description="When the job got its slot (KEY_MAX_JOBS_IN_FLIGHT, MAX_JOBS_IN_FLIGHT); "
        "null while it waits for one, `queued`.")
    started_at: datetime | None
    personas: list[PersonaPublic]
    synthesis: dict[str, Any] | None
    synthesis_provider: str | None
    critique: dict[str, Any] | None
    critique_provider: str | None
    stages: list[StagePublic] = Field(description="Every stage in pipeline order (the personas, "
                                      "synthesis and critique above are views of these).")
    usage: Usage
    degraded: bool = Field(
        description="Some output came from a fallback provider, not the chain's first."
    )


class JobList(BaseModel):
    items: list[JobSummary]
    limit: int
    offset: int
    next_offset: int | None


class BucketPublic(BaseModel):
    tokens: int
    token_capacity: int
    requests: int
    request_capacity: int
    wait_ms: int = Field(description="The wait for a one-token, one-request call, the day's "
                         "buckets included.")
    tokens_today: int | None = Field(None, description="Tokens left today (TPD); null without "
                                     "a daily token cap.")
    token_day_capacity: int | None = Field(None, description="Tokens per day; null: no cap.")
    requests_today: int | None = Field(None, description="Requests left today (RPD); null "
                                       "without a daily request cap.")
    request_day_capacity: int | None = Field(None, description="Requests per day; null: no cap.")
    day_resets_at: datetime | None = Field(
        None, description="When the day's buckets are full again: the provider's reset (a "
        "midnight, or a rolling day's full refill); null without a daily cap.")


class ProviderPublic(BaseModel):
    position: int
    name: str
    kind: str
    model: str
    configured: bool
    cooldown_until: datetime | None
    cooldown_reason: str | None
    circuit: str  # closed | open | half_open
    consecutive_failures: int
    bucket: BucketPublic | None
    tpm: int | None
    rpm: int | None


class ProviderList(BaseModel):
    chain: list[str]
    providers: list[ProviderPublic]


class Readiness(BaseModel):
    status: str = Field(description="`ok` when every dependency answers, else `unavailable`.")
    database: str = Field(description="`ok`, or `unreachable: <error class>`.")
    broker: str = Field(description="`ok`, or `unreachable: <error class>`.")


# -- interviews ------------------------------------------------------------------------------
class InterviewCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    idea: str = Field(
        description="The startup idea, as for a job: 1 to 20,000 characters, not only whitespace.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_IDEA_CHARS, "pattern": IDEA_PATTERN})

    @field_validator("idea")
    @classmethod
    def _idea(cls, v: str) -> str:
        return _text(v, MAX_IDEA_CHARS)


class AnswerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer: str = Field(
        description="The founder's answer to the latest question (a quick reply's text is "
        "fine): 1 to 4,000 characters, not only whitespace.",
        json_schema_extra={"minLength": 1, "maxLength": MAX_ANSWER_CHARS, "pattern": IDEA_PATTERN})

    @field_validator("answer")
    @classmethod
    def _answer(cls, v: str) -> str:
        return _text(v, MAX_ANSWER_CHARS)


class TurnUsage(BaseModel):
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class TurnPublic(BaseModel):
    n: int
    status: str = Field(description="streaming | done | failed (its text failed: answer again)")
    answer: str | None = Field(description="The founder's answer this turn replies to (none "
                               "for the first).")
    question: str | None = Field(description="The interviewer's text (so far, while streaming; "
                                 "what arrived, when it failed).")
    structured: dict[str, Any] | None = Field(
        description="The structured part: `eval` (each score 0-10 with its `reason` and how it "
        "`moved` since the last turn), `assumptions` (each with `status` added | confirmed | "
        "challenged, `since` and `changed`), `choices` (2-4 quick replies) and `done`; null "
        "when it failed on every provider (see `structured_error`).")
    structured_error: str | None
    error: str | None
    provider: str | None
    model: str | None
    first_token_ms: int | None = Field(description="From the worker's call to the first token.")
    usage: TurnUsage
    created_at: datetime
    finished_at: datetime | None
    events: str = Field(description="This turn's event stream (resumable with Last-Event-ID).")


class InterviewPublic(BaseModel):
    id: str
    idea: str
    status: str = Field(description="open | done (no more answers: build the masterplan)")
    created_at: datetime
    turns: list[TurnPublic]
    evaluation: dict[str, Any] | None = Field(description="The latest evaluation.")
    assumptions: list[dict[str, Any]] = Field(description="Tracked across turns.")
    job_id: str | None = Field(description="The masterplan job built from this interview.")
    usage: TurnUsage = Field(description="Every turn's calls together.")
