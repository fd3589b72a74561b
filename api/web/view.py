"""What the pages show of a job, built from the same reads the API answers with.

A job's page is `GET /v1/jobs/{id}` (the stages, their outputs, the usage) and
`GET /v1/jobs/{id}/calls` (the ledger), arranged for people: one card per stage with its tokens
and cost, why a stage fell back, the masterplan and the verdict as typed objects (or their raw
JSON when an output does not fit the schema), the attempts' timeline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from api.routes.calls import CallPublic, job_calls
from api.routes.jobs import job_public
from api.schemas import JobPublic, StagePublic
from api.web.timeline import Timeline, layout
from masterplan.db import queries as q
from masterplan.db.models import OPEN, LLMCall
from masterplan.llm.outcomes import CallOutcome
from masterplan.schemas import Critique, Masterplan, PersonaOutput
from masterplan.settings import Settings, provider_chain

# What a person reads for a stage's status.
STATUS_LABEL = {"pending": "queued", "running": "running", "succeeded": "done",
                "failed": "failed", "cancelled": "cancelled"}
_REASON_CHARS = 200


@dataclass(frozen=True)
class Card:
    """One stage as a card: where it ran, what it cost, what it said."""

    stage: str
    title: str
    kind: str
    status: str  # the stage's run status: pending, running, succeeded, failed, cancelled
    provider: str | None
    model: str | None
    fallback: str | None  # why another provider answered, when the first one tried did not
    latency_ms: int | None
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    error: str | None
    output: BaseModel | None  # the output as its schema, when it fits
    raw: dict[str, Any] | None  # the output as stored, when it does not

    @property
    def label(self) -> str:
        return STATUS_LABEL.get(self.status, self.status)


@dataclass(frozen=True)
class JobView:
    job: JobPublic
    open: bool
    personas: list[Card]
    stages: list[Card]  # the stages after the personas (synthesis, devil's advocate)
    plan: Masterplan | None
    critique: Critique | None
    calls: list[CallPublic]
    timeline: Timeline | None


@dataclass(frozen=True)
class RecentJob:
    id: str
    idea: str
    status: str
    cost_usd: float
    created_at: datetime
    age: str


def _typed(schema: type[BaseModel], output: dict[str, Any] | None) -> BaseModel | None:
    if output is None:
        return None
    try:
        return schema.model_validate(output)
    except ValidationError:
        return None


def _outcome_text(c: CallPublic) -> str:
    text = c.outcome.replace("_", " ")
    if c.error:
        error = c.error if len(c.error) <= _REASON_CHARS else c.error[:_REASON_CHARS - 1] + "…"
        text += f" — {error}"
    return text


def fallback_reason(calls: Sequence[CallPublic], provider: str | None) -> str | None:
    """Why the stage was answered by `provider` rather than the first provider it tried: what
    became of each provider tried before it (its last attempt), or None when `provider` was
    the first. `calls` are the stage's ledger rows."""
    ok = next((c for c in sorted(calls, key=lambda c: -c.id)
               if c.outcome == CallOutcome.OK and c.provider == provider), None)
    if ok is None or ok.fallback_from is None:
        return None
    before: dict[str, str] = {}
    for c in sorted(calls, key=lambda c: c.id):
        if c.id < ok.id and c.provider != provider and c.outcome != CallOutcome.DEFERRED:
            before[c.provider] = _outcome_text(c)
    if not before:  # rows older than their walk, or lost: the ledger says only where it came from
        return f"{ok.fallback_from} was tried first"
    return "; ".join(f"{name}: {why}" for name, why in before.items())


def _card(st: StagePublic, calls: Sequence[CallPublic], usage: dict[str, tuple[int, int, float]],
          schema: type[BaseModel]) -> Card:
    tokens_in, tokens_out, cost = usage.get(st.stage, (0, 0, 0.0))
    typed = _typed(schema, st.output)
    answered = st.status == "succeeded" and st.provider is not None
    return Card(
        stage=st.stage, title=st.title, kind=st.kind, status=st.status, provider=st.provider,
        model=st.model, fallback=fallback_reason(calls, st.provider) if answered else None,
        latency_ms=st.latency_ms, attempts=st.attempts, input_tokens=tokens_in,
        output_tokens=tokens_out, cost_usd=round(cost, 6), error=st.error, output=typed,
        raw=st.output if typed is None else None)


_SCHEMAS: dict[str, type[BaseModel]] = {"persona": PersonaOutput, "synthesis": Masterplan,
                                        "critique": Critique}


def job_view(session: Session, settings: Settings, job_id: str, *, owner: str) -> JobView | None:
    """The job as its page shows it, or None when it does not exist for this owner."""
    job = q.get_job(session, job_id=job_id, owner=owner)
    if job is None:
        return None
    chain = provider_chain(settings)
    public = job_public(session, job, chain[0])
    calls = job_calls(session, job_id=job.id)
    by_stage: dict[str, list[CallPublic]] = defaultdict(list)
    for c in calls:
        by_stage[c.stage].append(c)
    usage: dict[str, tuple[int, int, float]] = {}
    for row in public.usage.by_stage:
        tin, tout, cost = usage.get(row.stage, (0, 0, 0.0))
        usage[row.stage] = (tin + row.input_tokens, tout + row.output_tokens, cost + row.cost_usd)
    cards = [_card(st, by_stage[st.stage], usage, _SCHEMAS.get(st.kind, PersonaOutput))
             for st in public.stages]
    plan = next((c.output for c in cards if c.kind == "synthesis"
                 and isinstance(c.output, Masterplan)), None)
    critique = next((c.output for c in cards if c.kind == "critique"
                     and isinstance(c.output, Critique)), None)
    return JobView(
        job=public, open=public.status in OPEN,
        personas=[c for c in cards if c.kind == "persona"],
        stages=[c for c in cards if c.kind != "persona"],
        plan=plan, critique=critique, calls=calls, timeline=layout(calls, chain))


def age(then: datetime, now: datetime | None = None) -> str:
    """`then` as a person says it: "12 s ago", "5 min ago", "3 h ago", "2 d ago"."""
    now = now or datetime.now(UTC)
    then = then if then.tzinfo else then.replace(tzinfo=UTC)
    s = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


def recent_jobs(session: Session, *, owner: str, limit: int = 20) -> list[RecentJob]:
    """The owner's latest jobs with what each has cost so far (the ledger's sum)."""
    jobs = q.list_jobs(session, owner=owner, limit=limit)
    ids = [j.id for j in jobs]
    costs: dict[str, float] = {}
    if ids:
        rows = session.execute(
            sa.select(LLMCall.job_id, sa.func.coalesce(sa.func.sum(LLMCall.cost_usd), 0.0))
            .where(LLMCall.job_id.in_(ids)).group_by(LLMCall.job_id)).all()
        costs = {str(job_id): float(cost) for job_id, cost in rows}
    now = datetime.now(UTC)
    return [RecentJob(id=j.id, idea=j.idea, status=j.status, cost_usd=round(costs.get(j.id, 0.0), 6),
                      created_at=j.created_at, age=age(j.created_at, now)) for j in jobs]

