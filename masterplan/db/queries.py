"""Query functions: keyword-only arguments, an explicit session, no hidden commits."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from masterplan.db.models import FINISHED, Job, JobStatus, LLMCall, PersonaRun, RunStatus, utcnow
from masterplan.personas import PERSONA_KEYS


def create_job(
    session: Session, *, owner: str, idea: str, context: dict[str, Any] | None, deadline_s: int,
    idempotency_key: str | None = None,
) -> Job:
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()), owner=owner, idea=idea, context=context,
        idempotency_key=idempotency_key,
        status=JobStatus.QUEUED.value, created_at=now, deadline_at=now + timedelta(seconds=deadline_s),
    )
    session.add(job)
    session.flush()
    session.add_all(PersonaRun(job_id=job.id, persona=p, status=RunStatus.PENDING.value, attempts=0)
                    for p in PERSONA_KEYS)
    return job


def get_job(session: Session, *, job_id: str, owner: str | None = None) -> Job | None:
    # populate_existing: a job already in the session is refreshed (updates here are Core).
    stmt = sa.select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    return session.scalars(stmt).one_or_none()


def job_by_idempotency_key(session: Session, *, owner: str, key: str) -> Job | None:
    return session.scalars(
        sa.select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    ).one_or_none()


def list_jobs(session: Session, *, owner: str, limit: int, offset: int = 0) -> Sequence[Job]:
    """The owner's jobs, newest first."""
    stmt = (sa.select(Job).where(Job.owner == owner)
            .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset))
    return session.scalars(stmt).all()


def persona_runs(session: Session, *, job_id: str) -> list[PersonaRun]:
    rows = session.scalars(sa.select(PersonaRun).where(PersonaRun.job_id == job_id)
                           .execution_options(populate_existing=True)).all()
    order = {p: i for i, p in enumerate(PERSONA_KEYS)}
    return sorted(rows, key=lambda r: order.get(r.persona, 99))


def _dml(session: Session, stmt: Any) -> int:
    """Run an UPDATE/INSERT on the table (Core), not through the ORM's bulk-update path.

    The ORM path re-evaluates the WHERE clause against every object in the session to keep
    them in sync; these short transactions read what they need first, so that CPU is wasted
    (about a third of an UPDATE's client-side cost). Pending objects are flushed first, as the
    ORM path would have done, so a row added in the same session is seen.
    """
    session.flush()
    return int(cast(CursorResult[Any], session.execute(stmt)).rowcount)


_JOBS = cast(sa.Table, Job.__table__)
_RUNS = cast(sa.Table, PersonaRun.__table__)
_CALLS = cast(sa.Table, LLMCall.__table__)
_OPEN = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


def claim_persona(
    session: Session, *, job_id: str, persona: str, lease_s: int, mark_running: bool = True
) -> str:
    """Claim a persona run for this delivery. Returns "claimed", "finished" or "busy".

    First claim wins; a claim older than the lease (its worker died) can be taken over.
    `mark_running=False` skips moving the job from queued to running, for a caller that has
    just read the job and knows it is no longer queued (one statement fewer).
    """
    now = utcnow()
    stale = now - timedelta(seconds=lease_s)
    r = _RUNS.c
    claimed = _dml(session,
        sa.update(_RUNS)
        .where(
            r.job_id == job_id, r.persona == persona,
            sa.or_(r.status == RunStatus.PENDING.value,
                   sa.and_(r.status == RunStatus.RUNNING.value, r.claimed_at < stale)),
        )
        .values(status=RunStatus.RUNNING.value, claimed_at=now,
                started_at=sa.func.coalesce(r.started_at, now), attempts=r.attempts + 1)
    )
    if claimed:
        if mark_running:
            _dml(session,
                sa.update(_JOBS)
                .where(_JOBS.c.id == job_id, _JOBS.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, started_at=now)
            )
        return "claimed"
    status = session.scalar(
        sa.select(r.status).where(r.job_id == job_id, r.persona == persona)
    )
    if status is None:
        raise LookupError(f"job {job_id} has no persona {persona!r}")
    return "finished" if status in FINISHED else "busy"


def release_persona(session: Session, *, job_id: str, persona: str) -> None:
    """Hand a claimed run back (the task will be retried later)."""
    r = _RUNS.c
    _dml(session,
        sa.update(_RUNS)
        .where(r.job_id == job_id, r.persona == persona, r.status == RunStatus.RUNNING.value)
        .values(status=RunStatus.PENDING.value, claimed_at=None)
    )


def finish_persona(
    session: Session, *, job_id: str, persona: str, status: RunStatus,
    output: dict[str, Any] | None = None, provider: str | None = None, model: str | None = None,
    error: str | None = None, latency_ms: int | None = None,
) -> bool:
    """First finished write wins: returns False when the run had already finished."""
    r = _RUNS.c
    return bool(_dml(session,
        sa.update(_RUNS)
        .where(r.job_id == job_id, r.persona == persona, r.status.not_in(FINISHED))
        .values(status=status.value, output=output, provider=provider, model=model, error=error,
                latency_ms=latency_ms, finished_at=utcnow())
    ))


def record_calls(session: Session, *, job_id: str, stage: str, attempts: Iterable[Any]) -> None:
    """The ledger: one row per attempt (router `Attempt` dataclasses)."""
    rows = [dict(asdict(a), job_id=job_id, stage=stage, created_at=utcnow()) for a in attempts]
    if rows:
        session.flush()
        session.execute(sa.insert(_CALLS), rows)


def update_job(session: Session, *, job_id: str, only_if_open: bool = True, **values: Any) -> bool:
    """Update the job's columns (Core: objects already loaded in the session are not refreshed)."""
    stmt = sa.update(_JOBS).where(_JOBS.c.id == job_id)
    if only_if_open:
        stmt = stmt.where(_JOBS.c.status.in_(_OPEN))
    return bool(_dml(session, stmt.values(**values)))


def usage_by_stage(session: Session, *, job_id: str) -> list[dict[str, Any]]:
    """Tokens, cost, calls and bucket waits per stage and provider."""
    c = LLMCall
    rows = session.execute(
        sa.select(
            c.stage, c.provider,
            sa.func.count().filter(c.outcome.not_in(("skipped_cooldown", "skipped_ratelimit",
                                                     "never_fits", "deferred"))),
            sa.func.coalesce(sa.func.sum(c.input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.output_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0),
            sa.func.coalesce(sa.func.sum(c.wait_ms).filter(c.outcome == "deferred"), 0),
            sa.func.count().filter(c.outcome != "ok"),
        )
        .where(c.job_id == job_id)
        .group_by(c.stage, c.provider)
    ).all()
    order = {s: i for i, s in enumerate((*PERSONA_KEYS, "synthesis", "critique"))}
    rows = sorted(rows, key=lambda r: (order.get(r[0], 99), r[0], r[1]))
    return [
        {"stage": r[0], "provider": r[1], "calls": r[2], "input_tokens": int(r[3]),
         "output_tokens": int(r[4]), "cost_usd": round(float(r[5]), 6), "wait_ms": int(r[6]),
         "failed_attempts": r[7]}
        for r in rows
    ]


def llm_calls(session: Session, *, job_id: str) -> Sequence[LLMCall]:
    return session.scalars(sa.select(LLMCall).where(LLMCall.job_id == job_id).order_by(LLMCall.id)).all()
