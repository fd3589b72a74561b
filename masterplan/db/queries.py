"""Query functions: keyword-only arguments, an explicit session, no hidden commits."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from masterplan.db.models import (
    FINISHED,
    OPEN,
    Interview,
    Job,
    JobStatus,
    LLMCall,
    RunStatus,
    StageRun,
    utcnow,
)
from masterplan.llm.outcomes import SKIPS, CallOutcome
from masterplan.stages import pipeline


def create_job(
    session: Session, *, owner: str, idea: str, context: dict[str, Any] | None, deadline_s: int,
    idempotency_key: str | None = None, admitted: bool = True, lane: str = "first",
    max_cost_usd: float | None = None,
) -> Job:
    """A new job with its pending stages; `admitted=False` makes it wait for a slot."""
    now = utcnow()
    job = Job(
        id=str(uuid.uuid4()), owner=owner, idea=idea, context=context,
        idempotency_key=idempotency_key, admitted_at=now if admitted else None, lane=lane,
        max_cost_usd=max_cost_usd, held_usd=0.0,
        status=JobStatus.QUEUED.value, created_at=now, deadline_at=now + timedelta(seconds=deadline_s),
    )
    session.add(job)
    session.flush()
    session.add_all(StageRun(job_id=job.id, stage=st, status=RunStatus.PENDING.value, attempts=0)
                    for st in pipeline().names)
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


def expire_idempotency_key(session: Session, *, owner: str, key: str, ttl_s: int) -> bool:
    """Free the owner's key when the job that holds it is older than `ttl_s`."""
    j = _JOBS.c
    return bool(_dml(session, sa.update(_JOBS).where(
        j.owner == owner, j.idempotency_key == key,
        j.created_at < utcnow() - timedelta(seconds=ttl_s)).values(idempotency_key=None)))


def list_jobs(session: Session, *, owner: str, limit: int, offset: int = 0) -> Sequence[Job]:
    """The owner's jobs, newest first."""
    stmt = (sa.select(Job).where(Job.owner == owner)
            .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset))
    return session.scalars(stmt).all()


def stage_runs(session: Session, *, job_id: str) -> list[StageRun]:
    """The job's stages in pipeline order."""
    rows = session.scalars(sa.select(StageRun).where(StageRun.job_id == job_id)
                           .execution_options(populate_existing=True)).all()
    order = pipeline().order
    return sorted(rows, key=lambda r: order.get(r.stage, len(order)))


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
_RUNS = cast(sa.Table, StageRun.__table__)
_CALLS = cast(sa.Table, LLMCall.__table__)


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a stage for one delivery of its task."""

    state: str  # claimed | finished | busy | closed (the job is no longer open)
    took_over: bool = False  # the previous holder's lease had run out


def claim_stage(
    session: Session, *, job_id: str, stage: str, claim_id: str, lease_s: float,
    mark_running: bool = True,
) -> Claim:
    """Claim a stage for this delivery under a lease that the holder renews while it works.

    First claim wins; a claim whose lease ran out (its worker died) is taken over, and the call
    it had in flight is written to the ledger as `lost`. Nothing is claimed for a job that is no
    longer open (finished or cancelled). `mark_running=False` skips moving the job from queued to
    running, for a caller that has just read the job and knows it is past queued.
    """
    now = utcnow()
    r = _RUNS.c
    job_open = sa.exists().where(_JOBS.c.id == job_id, _JOBS.c.status.in_(OPEN))
    values = dict(status=RunStatus.RUNNING.value, claim_id=claim_id, claimed_at=now,
                  lease_until=now + timedelta(seconds=lease_s),
                  started_at=sa.func.coalesce(r.started_at, now), attempts=r.attempts + 1)
    base = sa.update(_RUNS).where(r.job_id == job_id, r.stage == stage, job_open)
    took_over = False
    if not _dml(session, base.where(r.status == RunStatus.PENDING.value).values(**values)):
        took_over = bool(_dml(session, base.where(
            r.status == RunStatus.RUNNING.value, r.lease_until < now).values(**values)))
        if not took_over:
            row = session.execute(sa.select(r.status, _JOBS.c.status).join(_JOBS, _JOBS.c.id == r.job_id)
                                  .where(r.job_id == job_id, r.stage == stage)).first()
            if row is None:
                raise LookupError(f"job {job_id} has no stage {stage!r}")
            if row[0] in FINISHED:
                return Claim("finished")
            return Claim("closed" if row[1] not in OPEN else "busy")
        record_lost(session, job_id=job_id, stages=[stage])
    if mark_running:
        _dml(session, sa.update(_JOBS).where(_JOBS.c.id == job_id, _JOBS.c.status == JobStatus.QUEUED.value)
             .values(status=JobStatus.RUNNING.value, started_at=now))
    return Claim("claimed", took_over)


def record_lost(session: Session, *, job_id: str, stages: Iterable[str]) -> None:
    """The ledger's account of a call whose worker died while it was in flight: what it cost is
    unknown to us (the provider may have charged it), so the row says so rather than nothing."""
    now = utcnow()
    session.execute(sa.insert(_CALLS), [
        dict(job_id=job_id, stage=st, provider="-", model="-", outcome=CallOutcome.LOST,
             error="the worker running this stage was lost (its lease ran out); a call it had "
                   "in flight may have been charged", created_at=now,
             input_tokens=0, output_tokens=0, cost_usd=0.0, latency_ms=0, wait_ms=0)
        for st in stages])


def release_stage(session: Session, *, job_id: str, stage: str, claim_id: str,
                  not_before_ms: int = 0) -> None:
    """Hand a claimed run back: its task is retried after `not_before_ms` (a wait, not a stall)."""
    r = _RUNS.c
    _dml(session,
        sa.update(_RUNS)
        .where(r.job_id == job_id, r.stage == stage, r.claim_id == claim_id,
               r.status == RunStatus.RUNNING.value)
        .values(status=RunStatus.PENDING.value, claim_id=None, lease_until=None,
                not_before=utcnow() + timedelta(milliseconds=not_before_ms))
    )


def renew_leases(session: Session, *, claim_ids: Sequence[str], lease_s: float) -> int:
    """Extend the leases this process holds (its heartbeat)."""
    if not claim_ids:
        return 0
    r = _RUNS.c
    return _dml(session, sa.update(_RUNS)
                .where(r.claim_id.in_(claim_ids), r.status == RunStatus.RUNNING.value)
                .values(lease_until=utcnow() + timedelta(seconds=lease_s)))


def lock_stage_states(session: Session, *, job_id: str) -> dict[str, tuple[str, str | None]]:
    """Every stage's (status, error), the rows locked until the transaction ends: the steps that
    finish a job's stages serialise here, so exactly one of them sees its successor become ready."""
    r = _RUNS.c
    rows = session.execute(sa.select(r.stage, r.status, r.error).where(r.job_id == job_id)
                           .with_for_update()).all()
    return {stage: (status, error) for stage, status, error in rows}


def finish_stage(
    session: Session, *, job_id: str, stage: str, status: RunStatus,
    output: dict[str, Any] | None = None, provider: str | None = None, model: str | None = None,
    error: str | None = None, latency_ms: int | None = None,
) -> bool:
    """First finished write wins: returns False when the run had already finished."""
    r = _RUNS.c
    return bool(_dml(session,
        sa.update(_RUNS)
        .where(r.job_id == job_id, r.stage == stage, r.status.not_in(FINISHED))
        .values(status=status.value, output=output, provider=provider, model=model, error=error,
                latency_ms=latency_ms, finished_at=utcnow(), claim_id=None, lease_until=None)
    ))


def finish_open_stages(session: Session, *, job_id: str, status: RunStatus, error: str,
                       only_pending: bool = False) -> None:
    """Close the stages that will not run now (deadline, cancellation); finished ones are kept."""
    r = _RUNS.c
    states = (RunStatus.PENDING.value,) if only_pending else (RunStatus.PENDING.value,
                                                              RunStatus.RUNNING.value)
    _dml(session, sa.update(_RUNS).where(r.job_id == job_id, r.status.in_(states))
         .values(status=status.value, error=error, finished_at=utcnow(), claim_id=None,
                 lease_until=None))


def needed_stages(session: Session, *, job_id: str, stages: Sequence[str]
                  ) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """(status, output) of each of `stages` (what a stage needs)."""
    r = _RUNS.c
    rows = session.execute(sa.select(r.stage, r.status, r.output).where(
        r.job_id == job_id, r.stage.in_(stages))).all()
    return {stage: (status, output) for stage, status, output in rows}


# -- admission (masterplan/admission.py) --------------------------------------------------
def lock_admission(session: Session) -> None:
    """Serialise admission decisions until the transaction ends (PostgreSQL; SQLite serialises
    its writers anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(ADMISSION_LOCK)))


ADMISSION_LOCK = 0x6D70_6164  # "mpad"
_IN_FLIGHT = sa.and_(_JOBS.c.status.in_(OPEN), _JOBS.c.admitted_at.is_not(None))
_WAITING = sa.and_(_JOBS.c.status == JobStatus.QUEUED.value, _JOBS.c.admitted_at.is_(None))


def in_flight(session: Session, *, owner: str) -> tuple[int, int, bool]:
    """(the owner's jobs in flight, all jobs in flight, whether any job waits for a slot)."""
    j = _JOBS.c
    mine, total, waiting = session.execute(sa.select(
        sa.func.count().filter(_IN_FLIGHT, j.owner == owner), sa.func.count().filter(_IN_FLIGHT),
        sa.func.count().filter(_WAITING)).where(j.status.in_(OPEN))).one()
    return int(mine), int(total), bool(waiting)


def any_waiting(session: Session) -> bool:
    return session.scalar(sa.select(sa.exists().where(_WAITING))) or False


def active_owners(session: Session, *, since: datetime, at_least: int) -> bool:
    """Whether at least `at_least` owners have open jobs or submitted one since `since`."""
    j = _JOBS.c
    owners = sa.select(j.owner).where(sa.or_(j.status.in_(OPEN), j.created_at >= since)) \
        .distinct().limit(at_least).subquery()
    return int(session.scalar(sa.select(sa.func.count()).select_from(owners)) or 0) >= at_least


def interviews_active(session: Session, *, since: datetime) -> bool:
    return bool(session.scalar(sa.select(sa.exists().where(Interview.updated_at >= since))))


def open_by_owner(session: Session) -> dict[str, int]:
    """Jobs in flight per owner, for every owner with an open job."""
    j = _JOBS.c
    rows = session.execute(sa.select(j.owner, sa.func.count().filter(_IN_FLIGHT))
                           .where(j.status.in_(OPEN)).group_by(j.owner)).all()
    return {owner: int(n) for owner, n in rows}


def waiting_jobs(session: Session, *, per_owner: int) -> list[tuple[str, str]]:
    """(job_id, owner) of the jobs waiting for a slot, oldest first, at most `per_owner` of each."""
    j = _JOBS.c
    rank = sa.func.row_number().over(partition_by=j.owner, order_by=(j.created_at, j.id))
    sub = sa.select(j.id, j.owner, j.created_at, rank.label("rank")).where(_WAITING).subquery()
    rows = session.execute(sa.select(sub.c.id, sub.c.owner).where(sub.c.rank <= per_owner)
                           .order_by(sub.c.created_at, sub.c.id)).all()
    return [(job_id, owner) for job_id, owner in rows]


def admit_jobs(session: Session, *, job_ids: Sequence[str], lane: str, deadline_s: int) -> list[str]:
    """Put waiting jobs in flight; their deadline counts from now. Returns the ones admitted."""
    if not job_ids:
        return []
    now = utcnow()
    j = _JOBS.c
    done = session.execute(sa.update(_JOBS).where(j.id.in_(job_ids), _WAITING).values(
        admitted_at=now, lane=lane, deadline_at=now + timedelta(seconds=deadline_s))
        .returning(j.id)).scalars().all()
    return list(done)


def nth_recent_submission(session: Session, *, owner: str, n: int,
                          window_s: float) -> datetime | None:
    """When the owner's n-th newest job within the last `window_s` was created, if there is one."""
    j = _JOBS.c
    return session.scalar(sa.select(j.created_at).where(
        j.owner == owner, j.created_at > utcnow() - timedelta(seconds=window_s))
        .order_by(j.created_at.desc()).offset(n - 1).limit(1))


# -- cost ceilings (masterplan/budget.py) ---------------------------------------------------
def _spent(job_id: Any) -> Any:
    c = _CALLS.c
    return sa.select(sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0)).where(
        c.job_id == job_id).scalar_subquery()


def hold_budget(session: Session, *, job_id: str, usd: float) -> bool:
    """Hold a call's worst case against the open job's ceiling, if spent + held + it fit."""
    j = _JOBS.c
    return bool(_dml(session, sa.update(_JOBS).where(
        j.id == job_id, j.status.in_(OPEN), _spent(j.id) + j.held_usd + usd <= j.max_cost_usd)
        .values(held_usd=j.held_usd + usd)))


def release_budget(session: Session, *, job_id: str, usd: float) -> None:
    """Give a stage's holds back (in the transaction that writes its calls to the ledger)."""
    j = _JOBS.c
    _dml(session, sa.update(_JOBS).where(j.id == job_id).values(
        held_usd=sa.func.max(j.held_usd - usd, 0.0) if session.get_bind().dialect.name == "sqlite"
        else sa.func.greatest(j.held_usd - usd, 0.0)))


def job_spend(session: Session, *, job_id: str) -> tuple[float, float]:
    """(spent by the ledger, held by calls in flight)."""
    j = _JOBS.c
    spent, held = session.execute(sa.select(_spent(j.id), j.held_usd).where(j.id == job_id)).one()
    return float(spent), float(held)


def owner_spend_since(session: Session, *, owner: str, since: datetime) -> float:
    """What the owner's jobs' and interviews' calls cost since `since` (the ledger)."""
    c, j = _CALLS.c, _JOBS.c
    jobs = sa.select(j.id).where(j.owner == owner).scalar_subquery()
    interviews = sa.select(Interview.id).where(Interview.owner == owner).scalar_subquery()
    return float(session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0))
        .where(sa.or_(c.job_id.in_(jobs), c.interview_id.in_(interviews)),
               c.created_at >= since)) or 0.0)


# -- recovery ------------------------------------------------------------------------------
def reap_expired_leases(session: Session, *, max_attempts: int) -> list[tuple[str, str]]:
    """Stages whose holder stopped renewing its lease (a dead worker): handed back as pending,
    or failed after `max_attempts` claims (a stage that kills every worker it runs on).
    Returns the (job_id, stage) pairs reaped; their lost calls are on the ledger."""
    now = utcnow()
    r = _RUNS.c
    expired = session.execute(
        sa.select(r.job_id, r.stage, r.attempts).where(
            r.status == RunStatus.RUNNING.value, r.lease_until < now)
        .with_for_update(skip_locked=True)).all()
    reaped = []
    for job_id, stage, attempts in expired:
        give_up = attempts >= max_attempts
        values: dict[str, Any] = dict(claim_id=None, lease_until=None)
        if give_up:
            values |= dict(status=RunStatus.FAILED.value, finished_at=now,
                           error=f"its worker was lost {attempts} times while running it")
        else:
            values |= dict(status=RunStatus.PENDING.value, not_before=now)
        if _dml(session, sa.update(_RUNS).where(r.job_id == job_id, r.stage == stage,
                                                 r.status == RunStatus.RUNNING.value,
                                                 r.lease_until < now).values(**values)):
            record_lost(session, job_id=job_id, stages=[stage])
            reaped.append((job_id, stage))
    return reaped


def stalled_jobs(session: Session, *, stall_s: float, limit: int = 500) -> list[tuple[str, int]]:
    """Jobs in flight with no live lease that are due a look (`check_at`) and either had nothing
    done for `stall_s` (since their admission), or are still queued after the API could not publish
    them (it sets `check_at`) or after a re-drive: (job_id, re-drives so far)."""
    now = utcnow()
    stale = now - timedelta(seconds=stall_s)
    r, j = _RUNS.c, _JOBS.c
    live = sa.exists().where(r.job_id == j.id, r.status == RunStatus.RUNNING.value, r.lease_until >= now)
    recent = sa.exists().where(r.job_id == j.id, sa.or_(r.finished_at >= stale, r.claimed_at >= stale,
                                                        r.not_before >= stale))
    stalled = sa.and_(j.admitted_at < stale, ~recent)
    unpublished = sa.and_(j.status == JobStatus.QUEUED.value, j.check_at.is_not(None))
    rows = session.execute(
        sa.select(j.id, j.redrives).where(
            _IN_FLIGHT, sa.or_(j.check_at.is_(None), j.check_at < now), ~live,
            sa.or_(stalled, unpublished))
        .order_by(j.created_at).limit(limit)).all()
    return [(job_id, int(n)) for job_id, n in rows]


def mark_redrive(session: Session, *, job_id: str, next_check_s: float) -> bool:
    """Take this job's re-drive (one sweeper wins, whatever runs at once); count it."""
    now = utcnow()
    j = _JOBS.c
    return bool(_dml(session, sa.update(_JOBS).where(
        j.id == job_id, j.status.in_(OPEN), sa.or_(j.check_at.is_(None), j.check_at < now))
        .values(check_at=now + timedelta(seconds=next_check_s), redrives=j.redrives + 1)))


def overdue_jobs(session: Session, *, limit: int = 500) -> list[str]:
    """Jobs in flight past their deadline (a waiting job's deadline starts at its admission)."""
    j = _JOBS.c
    return list(session.scalars(sa.select(j.id).where(_IN_FLIGHT, j.deadline_at < utcnow())
                                .limit(limit)))


def _ledger_row(attempt: Any, **where: Any) -> dict[str, Any]:
    row = dict(attempt if isinstance(attempt, dict) else asdict(attempt), **where,
               created_at=utcnow())
    started = row.pop("started", None)
    row["started_at"] = datetime.fromtimestamp(started, UTC) if started else None
    return row


def record_calls(session: Session, *, job_id: str | None = None, interview_id: str | None = None,
                 stage: str, attempts: Iterable[Any]) -> None:
    """The ledger: one row per attempt (router `Attempt`s, or their dicts), of a job's stage or
    of an interview's turn."""
    rows = [_ledger_row(a, job_id=job_id, interview_id=interview_id, stage=stage)
            for a in attempts]
    if rows:
        session.flush()
        session.execute(sa.insert(_CALLS), rows)


def extend_wait(session: Session, *, job_id: str, stage: str, row: dict[str, Any]) -> None:
    """One more wait in a stage's waiting episode: added to the episode's `deferred` row, so the
    ledger grows with calls, not with every look at a chain that must still wait."""
    c = _CALLS.c
    last = sa.select(sa.func.max(c.id)).where(c.job_id == job_id, c.stage == stage,
                                              c.outcome == CallOutcome.DEFERRED).scalar_subquery()
    if not _dml(session, sa.update(_CALLS).where(c.id == last).values(
            wait_ms=c.wait_ms + row["wait_ms"], error=row["error"], provider=row["provider"],
            model=row["model"])):
        record_calls(session, job_id=job_id, stage=stage, attempts=[row])


def update_job(session: Session, *, job_id: str, only_if_open: bool = True, **values: Any) -> bool:
    """Update the job's columns (Core: objects already loaded in the session are not refreshed)."""
    stmt = sa.update(_JOBS).where(_JOBS.c.id == job_id)
    if only_if_open:
        stmt = stmt.where(_JOBS.c.status.in_(OPEN))
    return bool(_dml(session, stmt.values(**values)))


def usage_by_stage(session: Session, *, job_id: str) -> list[dict[str, Any]]:
    """Tokens (`cached_input_tokens` and `cache_write_tokens` are parts of `input_tokens`),
    cost, calls and bucket waits per stage and provider; `wasted_cost_usd` is what
    the attempts that gave nothing cost (invalid output repaired or not, errors, lost calls)."""
    c = LLMCall
    rows = session.execute(
        sa.select(
            c.stage, c.provider,
            sa.func.count().filter(c.outcome.not_in((*SKIPS, CallOutcome.DEFERRED))),
            sa.func.coalesce(sa.func.sum(c.input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.output_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.cost_usd), 0.0),
            sa.func.coalesce(sa.func.sum(c.cached_input_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.cache_write_tokens), 0),
            sa.func.coalesce(sa.func.sum(c.wait_ms).filter(c.outcome == CallOutcome.DEFERRED), 0),
            sa.func.count().filter(c.outcome != CallOutcome.OK),
            sa.func.coalesce(sa.func.sum(c.cost_usd).filter(c.outcome != CallOutcome.OK), 0.0),
        )
        .where(c.job_id == job_id)
        .group_by(c.stage, c.provider)
    ).all()
    order = pipeline().order
    rows = sorted(rows, key=lambda r: (order.get(r[0], len(order)), r[0], r[1]))
    return [
        {"stage": r[0], "provider": r[1], "calls": r[2], "input_tokens": int(r[3]),
         "output_tokens": int(r[4]), "cost_usd": round(float(r[5]), 6),
         "cached_input_tokens": int(r[6]), "cache_write_tokens": int(r[7]), "wait_ms": int(r[8]),
         "failed_attempts": r[9], "wasted_cost_usd": round(float(r[10]), 6)}
        for r in rows
    ]


def llm_calls(session: Session, *, job_id: str) -> Sequence[LLMCall]:
    return session.scalars(sa.select(LLMCall).where(LLMCall.job_id == job_id).order_by(LLMCall.id)).all()
