"""POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/jobs."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import OwnerDep, RuntimeDep, SessionDep
from api.schemas import JobCreate, JobList, JobPublic, JobSummary, PersonaPublic, Usage
from masterplan.db import queries as q
from masterplan.db.models import Job, JobStatus, utcnow
from masterplan.runtime import Runtime
from masterplan.settings import provider_chain

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_public(session: Session, job: Job, primary: str) -> JobPublic:
    """`primary` is the chain's first provider: an output from any other one is degraded."""
    by_stage = q.usage_by_stage(session, job_id=job.id)
    runs = q.persona_runs(session, job_id=job.id)
    used = {r.provider for r in runs} | {job.synthesis_provider, job.critique_provider}
    totals = {
        "input_tokens": sum(r["input_tokens"] for r in by_stage),
        "output_tokens": sum(r["output_tokens"] for r in by_stage),
        "cost_usd": round(sum(r["cost_usd"] for r in by_stage), 6),
        "wait_ms": sum(r["wait_ms"] for r in by_stage),
    }
    return JobPublic(
        **JobSummary.model_validate(job, from_attributes=True).model_dump(),
        context=job.context,
        started_at=job.started_at,
        personas=[PersonaPublic.model_validate(r, from_attributes=True) for r in runs],
        synthesis=job.synthesis,
        synthesis_provider=job.synthesis_provider,
        critique=job.critique,
        critique_provider=job.critique_provider,
        usage=Usage.model_validate({"by_stage": by_stage, "totals": totals}),
        degraded=bool(used - {None, primary}),
    )


def _primary(rt: Runtime) -> str:
    return provider_chain(rt.settings)[0]


IdempotencyKey = Annotated[
    str | None,
    Header(max_length=128, description="Resubmitting with the same key returns the same job."),
]


def _replay(job: Job, body: JobCreate) -> None:
    if job.idea != body.idea or (job.context or None) != (body.context or None):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key was already used for job {job.id} with a different idea or "
            "context; use a new key for a new submission",
        )


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def submit(body: JobCreate, owner: OwnerDep, rt: RuntimeDep, response: Response,
           idempotency_key: IdempotencyKey = None) -> JobPublic:
    """Store the job, then enqueue it. With an Idempotency-Key, a retry returns the first job
    (200) instead of creating another."""
    from tasks.pipeline import enqueue

    try:
        with rt.sessions.begin() as session:
            job = q.create_job(session, owner=owner, idea=body.idea, context=body.context,
                               deadline_s=rt.settings.job_deadline_s,
                               idempotency_key=idempotency_key)
    except IntegrityError:
        with rt.sessions() as session:
            job = q.job_by_idempotency_key(session, owner=owner, key=idempotency_key or "")
            if job is None:
                raise
            _replay(job, body)
            response.status_code = status.HTTP_200_OK
            response.headers["Location"] = f"/v1/jobs/{job.id}"
            return job_public(session, job, _primary(rt))
    try:
        enqueue(job.id)
    except Exception as exc:  # noqa: BLE001 - the broker is down: keep the job, say why
        reason = f"could not enqueue: broker unreachable ({type(exc).__name__})"
        log.error("job %s: %s", job.id, reason)
        with rt.sessions.begin() as session:
            q.update_job(session, job_id=job.id, status=JobStatus.FAILED.value, error=reason,
                         finished_at=utcnow())
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"job {job.id} was stored but {reason}; submit it again later") from exc
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    with rt.sessions() as session:
        return job_public(session, q.get_job(session, job_id=job.id), _primary(rt))  # type: ignore[arg-type]


@router.get("/{job_id}", response_model=JobPublic)
def read(job_id: str, owner: OwnerDep, session: SessionDep, rt: RuntimeDep) -> JobPublic:
    job = q.get_job(session, job_id=job_id, owner=owner)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    return job_public(session, job, _primary(rt))


@router.get("", response_model=JobList)
def list_(
    owner: OwnerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobList:
    rows = q.list_jobs(session, owner=owner, limit=limit + 1, offset=offset)
    return JobList(
        items=[JobSummary.model_validate(j, from_attributes=True) for j in rows[:limit]],
        limit=limit, offset=offset, next_offset=offset + limit if len(rows) > limit else None,
    )
