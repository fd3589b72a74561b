"""GET /v1/jobs/{id}/calls: the job's ledger, one row per LLM attempt, with when it ran.

A row is written when its attempt ends. `started_at` is the ledger's own; rows older than that
column have it estimated from when the row was written, less the call's latency. An attempt
ends `latency_ms` after it starts, except a `deferred` row (the whole stage put off because
every provider had to wait), which lasts its `wait_ms`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.deps import AuthenticatedRoute, OwnerDep, SessionDep
from masterplan.db import queries as q
from masterplan.db.models import LLMCall
from masterplan.llm.outcomes import CallOutcome

router = APIRouter(tags=["jobs"], route_class=AuthenticatedRoute)


class CallPublic(BaseModel):
    """One attempt: a provider's call, or a provider passed over without one."""

    id: int
    stage: str
    provider: str
    model: str
    outcome: str = Field(description="`ok`, a failure (`rate_limited`, `server_error`, "
                         "`invalid_output`, ...), a skip (`skipped_cooldown`, "
                         "`skipped_ratelimit`, `never_fits`), `deferred` or `lost`.")
    error_class: str | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    cost_usd: float
    latency_ms: int
    wait_ms: int = Field(description="For a skip or a failure, the wait the provider asked for; "
                         "for `deferred`, how long the stage was put off.")
    fallback_from: str | None = Field(description="The provider tried before this one in the "
                                      "chain; null for the chain's first.")
    started_at: datetime
    ended_at: datetime
    started_estimated: bool = Field(description="The row predates the ledger's start times: "
                                    "`started_at` is estimated from when the row was written.")


class CallList(BaseModel):
    job_id: str
    items: list[CallPublic] = Field(description="In the order the attempts started.")


def _aware(dt: datetime) -> datetime:
    # SQLite gives back naive datetimes for timezone-aware columns.
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def call_public(c: LLMCall) -> CallPublic:
    deferred = c.outcome == CallOutcome.DEFERRED
    estimated = c.started_at is None
    if c.started_at is not None:
        start = _aware(c.started_at)
    else:
        start = _aware(c.created_at) - timedelta(milliseconds=0 if deferred else c.latency_ms)
    lasted = c.wait_ms if deferred else c.latency_ms
    return CallPublic(
        id=c.id, stage=c.stage, provider=c.provider, model=c.model, outcome=c.outcome,
        error_class=c.error_class, error=c.error, input_tokens=c.input_tokens,
        output_tokens=c.output_tokens, cached_input_tokens=c.cached_input_tokens,
        cache_write_tokens=c.cache_write_tokens, cost_usd=c.cost_usd, latency_ms=c.latency_ms,
        wait_ms=c.wait_ms, fallback_from=c.fallback_from, started_at=start,
        ended_at=start + timedelta(milliseconds=max(lasted, 0)), started_estimated=estimated)


def job_calls(session: Session, *, job_id: str) -> list[CallPublic]:
    """The job's attempts in the order they started (ties: the order they were written)."""
    rows = [call_public(c) for c in q.llm_calls(session, job_id=job_id)]
    return sorted(rows, key=lambda c: (c.started_at, c.id))


@router.get("/v1/jobs/{job_id}/calls", response_model=CallList,
            responses={404: {"description": "No such job for this API key"}})
def calls(job_id: UUID, owner: OwnerDep, session: SessionDep) -> CallList:
    """Every LLM attempt the job made: provider, model, stage, outcome, error, tokens, cost,
    latency, wait, the provider it fell back from, and when it started and ended."""
    job = q.get_job(session, job_id=str(job_id), owner=owner)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    return CallList(job_id=job.id, items=job_calls(session, job_id=job.id))
