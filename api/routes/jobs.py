"""POST /v1/jobs, GET /v1/jobs/{id}, DELETE /v1/jobs/{id}, GET /v1/jobs.

Every input is checked before anything is stored, so a job that exists can always be read back.
"""

from __future__ import annotations

import logging
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Header, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import AuthenticatedRoute, OwnerDep, RuntimeDep, SessionDep
from api.schemas import (
    EXAMPLES,
    JobCreate,
    JobList,
    JobPublic,
    JobSummary,
    PersonaPublic,
    StagePublic,
    Usage,
)
from api.validation import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY_CHARS,
    ContextLimits,
    context_problem,
)
from masterplan import admission, budget
from masterplan import pipeline as pipeline_steps
from masterplan.db import queries as q
from masterplan.db.models import Job, StageRun, utcnow
from masterplan.runtime import Runtime
from masterplan.settings import provider_chain
from masterplan.stages import JobInput, Kind, Pipeline, pipeline

log = logging.getLogger(__name__)
# Authenticated before the body is read: a caller without a key costs no parsing.
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=AuthenticatedRoute)
MAX_OFFSET = 1_000_000
LOCATION = {"Location": {"description": "The job's URL, `/v1/jobs/<id>`.", "required": True,
                         "schema": {"type": "string"}}}


def _stage_public(p: Pipeline, r: StageRun) -> StagePublic:
    known = p[r.stage] if r.stage in p.order else None
    return StagePublic(stage=r.stage, title=known.title if known else r.stage,
                       kind=known.kind.value if known else "unknown", status=r.status,
                       provider=r.provider, model=r.model, attempts=r.attempts, error=r.error,
                       latency_ms=r.latency_ms, output=r.output)


def job_public(session: Session, job: Job, primary: str) -> JobPublic:
    """`primary` is the chain's first provider: an output from any other one is degraded.
    The personas, the synthesis and the critique are read from the job's stage rows."""
    p = pipeline()
    by_stage = q.usage_by_stage(session, job_id=job.id)
    stages = [_stage_public(p, r) for r in q.stage_runs(session, job_id=job.id)]
    named = {st.stage: st for st in stages}
    personas = set(p.of_kind(Kind.PERSONA))
    totals = {
        "input_tokens": sum(r["input_tokens"] for r in by_stage),
        "output_tokens": sum(r["output_tokens"] for r in by_stage),
        "cached_input_tokens": sum(r["cached_input_tokens"] for r in by_stage),
        "cache_write_tokens": sum(r["cache_write_tokens"] for r in by_stage),
        "cost_usd": round(sum(r["cost_usd"] for r in by_stage), 6),
        "wasted_cost_usd": round(sum(r["wasted_cost_usd"] for r in by_stage), 6),
        "wait_ms": sum(r["wait_ms"] for r in by_stage),
    }
    synthesis, critique = named.get("synthesis"), named.get("critique")
    return JobPublic(
        **JobSummary.model_validate(job, from_attributes=True).model_dump(),
        context=job.context,
        max_cost_usd=job.max_cost_usd,
        admitted_at=job.admitted_at,
        started_at=job.started_at,
        personas=[PersonaPublic(persona=st.stage, **st.model_dump(exclude={"stage", "title", "kind"}))
                  for st in stages if st.stage in personas],
        synthesis=synthesis.output if synthesis else None,
        synthesis_provider=synthesis.provider if synthesis and synthesis.output else None,
        critique=critique.output if critique else None,
        critique_provider=critique.provider if critique and critique.output else None,
        stages=stages,
        usage=Usage.model_validate({"by_stage": by_stage, "totals": totals}),
        degraded=bool({st.provider for st in stages if st.output} - {None, primary}),
    )


def _primary(rt: Runtime) -> str:
    return provider_chain(rt.settings)[0]


IdempotencyKey = Annotated[
    str | None,
    Header(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS, pattern=IDEMPOTENCY_KEY_PATTERN,
           description="Resubmitting with the same key returns the same job (200) instead of "
           "creating another; the same key with another body is a 409. 1 to 128 printable ASCII "
           "characters."),
]
JobBody = Annotated[JobCreate, Body(openapi_examples=EXAMPLES)]


def _replay(job: Job, body: JobCreate) -> None:
    if job.idea != body.idea or (job.context or None) != (body.context or None) \
            or (body.max_cost_usd is not None and job.max_cost_usd != body.max_cost_usd):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key was already used for job {job.id} with a different idea or "
            "context; use a new key for a new submission",
        )


def _refuse(loc: tuple[str | int, ...], message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": message}])


def _check_context(body: JobCreate, rt: Runtime) -> None:
    if body.context is None:
        return
    found = context_problem(body.context, ContextLimits.of(rt.settings))
    if found is not None:
        raise _refuse(*found)


def _check_ceiling(body: JobCreate, rt: Runtime) -> float | None:
    """The job's ceiling, if its estimate fits it."""
    ceiling = budget.job_ceiling(rt.settings, body.max_cost_usd)
    if ceiling is None:
        return None
    estimate = budget.estimate_job_usd(rt.settings, JobInput(body.idea, body.context))
    if estimate > ceiling:
        named = "max_cost_usd" if body.max_cost_usd is not None else "JOB_MAX_COST_USD"
        raise _refuse(("max_cost_usd",), (
            f"the job is estimated at {budget.usd(estimate)} (one pass of every stage on "
            f"{_primary(rt)} at its reservations), above {named}={budget.usd(ceiling)}; raise it "
            f"to at least {budget.usd(estimate)}"))
    return ceiling


def _key_limit(session: Session, rt: Runtime, owner: str) -> HTTPException | None:
    """The 429 a new submission of this key gets, if any: KEY_SUBMISSIONS_PER_MIN, then
    KEY_DAILY_BUDGET_USD (the ledger's spend of the key's jobs since UTC midnight)."""
    wait = admission.retry_after_s(session, rt.settings, owner)
    if wait is not None:
        return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                             f"this API key submitted {rt.settings.key_submissions_per_min} jobs in "
                             f"the last minute (KEY_SUBMISSIONS_PER_MIN); retry in {wait} s",
                             headers={"Retry-After": str(wait)})
    return daily_budget_refusal(session, rt, owner)


def daily_budget_refusal(session: Session, rt: Runtime, owner: str) -> HTTPException | None:
    """The 429 of a key past KEY_DAILY_BUDGET_USD (its jobs' and interviews' spend since UTC
    midnight, from the ledger), if it is."""
    cap = rt.settings.key_daily_budget_usd
    if cap is None:
        return None
    now = utcnow()
    spent = q.owner_spend_since(session, owner=owner,
                                since=now.replace(hour=0, minute=0, second=0, microsecond=0))
    if spent < cap:
        return None
    reset = budget.next_utc_midnight(now)
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                         f"this API key has spent {budget.usd(spent)} today (KEY_DAILY_BUDGET_USD="
                         f"{budget.usd(cap)}); submissions are accepted again at {reset.isoformat()}",
                         headers={"Retry-After": str(max(1, int((reset - now).total_seconds())))})


class _Replay(Exception):
    """The submission is a retry of one already stored (its Idempotency-Key is taken)."""


def _create(rt: Runtime, owner: str, body: JobBody, key: str | None,
            ceiling: float | None) -> Job:
    """Store the job, in flight at once or waiting for a slot (masterplan/admission.py). A key
    older than IDEMPOTENCY_TTL_S has expired: it is taken from the job that had it (which keeps
    everything else) and given to this one."""
    for last_try in (False, True):
        try:
            with rt.sessions.begin() as session:
                limited = _key_limit(session, rt, owner)
                if limited is not None:
                    if key is not None and q.job_by_idempotency_key(session, owner=owner, key=key):
                        raise _Replay  # a retry is answered, never limited
                    raise limited
                slot = admission.slot_for_new_job(session, rt.settings, owner)
                return q.create_job(session, owner=owner, idea=body.idea, context=body.context,
                                    deadline_s=rt.settings.job_deadline_s, idempotency_key=key,
                                    admitted=slot.admitted, lane=slot.lane, max_cost_usd=ceiling)
        except IntegrityError:
            if key is None or last_try:
                raise
            with rt.sessions.begin() as session:
                if not q.expire_idempotency_key(session, owner=owner, key=key,
                                                ttl_s=rt.settings.idempotency_ttl_s):
                    raise
    raise AssertionError("unreachable")


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic, responses={
    202: {"description": "The job was stored and queued.", "headers": LOCATION},
    200: {"model": JobPublic, "headers": LOCATION,
          "description": "A retry with the same Idempotency-Key and body: the first job."},
    409: {"description": "The Idempotency-Key was used with another body, or its first "
          "request is still being stored."},
    429: {"description": "This API key submitted KEY_SUBMISSIONS_PER_MIN jobs in the last minute, "
          "or spent KEY_DAILY_BUDGET_USD today; `Retry-After` says when the next one is accepted. "
          "A retry of a stored submission (same Idempotency-Key) is answered, never limited."},
})
def submit(body: JobBody, owner: OwnerDep, rt: RuntimeDep, response: Response,
           idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Store the job, then enqueue it. With an Idempotency-Key, a retry returns the first job
    (200) instead of creating another. A key with KEY_MAX_JOBS_IN_FLIGHT jobs running (or the
    system at MAX_JOBS_IN_FLIGHT) has its job stored `queued` and started when a slot frees,
    each slot going to the key with the fewest jobs running."""
    from tasks.pipeline import enqueue

    _check_context(body, rt)
    ceiling = _check_ceiling(body, rt)
    try:
        job = _create(rt, owner, body, idempotency_key, ceiling)
    except (IntegrityError, _Replay):
        if idempotency_key is None:
            raise
        with rt.sessions() as session:
            first = q.job_by_idempotency_key(session, owner=owner, key=idempotency_key)
            if first is None:
                # The row the insert collided with is gone again (rolled back or removed): a
                # retry of this request will be stored.
                raise HTTPException(status.HTTP_409_CONFLICT,
                                    "a request with this Idempotency-Key is being processed; "
                                    "retry", headers={"Retry-After": "1"}) from None
            _replay(first, body)
            response.status_code = status.HTTP_200_OK
            response.headers["Location"] = f"/v1/jobs/{first.id}"
            return job_public(session, first, _primary(rt))
    # Waiting for a slot: nothing is published until its admission, in fair order (which may
    # be at once, and may let in other keys' waiting jobs too).
    for admitted in [job.id] if job.admitted_at is not None else admission.release(rt):
        try:
            enqueue(admitted)
        except Exception as exc:  # noqa: BLE001 - the broker is away: the job row is the outbox
            log.warning("job %s stored, not yet published (broker unreachable: %s: %s); the "
                        "recovery sweep publishes it", admitted, type(exc).__name__, exc)
            with rt.sessions.begin() as session:
                q.update_job(session, job_id=admitted, check_at=utcnow())
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    with rt.sessions() as session:
        return job_public(session, q.get_job(session, job_id=job.id), _primary(rt))  # type: ignore[arg-type]


@router.delete("/{job_id}", response_model=JobPublic,
               responses={404: {"description": "No such job for this API key"},
                          409: {"description": "The job has already ended"}})
def cancel(job_id: UUID, owner: OwnerDep, rt: RuntimeDep) -> JobPublic:
    """Cancel a queued or running job: no new LLM call starts for it; calls already running
    finish and are recorded; what finished is kept."""
    from tasks.pipeline import enqueue

    found, cancelled = pipeline_steps.cancel(rt, str(job_id), owner=owner)
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    for admitted in admission.release_quietly(rt) if cancelled else []:
        try:
            enqueue(admitted)
        except Exception as exc:  # noqa: BLE001 - the sweep re-drives an admitted job
            log.warning("job %s admitted, not yet published (%s); the recovery sweep will",
                        admitted, exc)
    with rt.sessions() as session:
        job = q.get_job(session, job_id=str(job_id))
        assert job is not None
        if not cancelled:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"job {job_id} has already ended ({job.status}); nothing to cancel")
        return job_public(session, job, _primary(rt))


@router.get("/{job_id}", response_model=JobPublic,
            responses={404: {"description": "No such job for this API key"}})
def read(job_id: UUID, owner: OwnerDep, session: SessionDep, rt: RuntimeDep) -> JobPublic:
    """The job, its stages in pipeline order, their outputs, usage and cost."""
    job = q.get_job(session, job_id=str(job_id), owner=owner)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    return job_public(session, job, _primary(rt))


@router.get("", response_model=JobList)
def list_(
    owner: OwnerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    """The caller's jobs, newest first."""
    rows = q.list_jobs(session, owner=owner, limit=limit + 1, offset=offset)
    return JobList(
        items=[JobSummary.model_validate(j, from_attributes=True) for j in rows[:limit]],
        limit=limit, offset=offset, next_offset=offset + limit if len(rows) > limit else None,
    )
