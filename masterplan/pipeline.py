"""The masterplan job's steps as plain functions: ids in, database rows out.

Celery tasks are thin wrappers around these (tasks/pipeline.py). Every step is idempotent: the
database, not the broker, says what has been done, so a redelivered task does no work twice.
A step that must wait raises RetryLater; the task turns that into `retry(countdown=...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from masterplan import errors as E
from masterplan.db import queries as q
from masterplan.db.models import FINISHED, Job, JobStatus, RunStatus, utcnow
from masterplan.llm.base import Completion, LLMRequest
from masterplan.llm.router import Attempt
from masterplan.personas import (
    PERSONA_KEYS,
    Stage,
    critique_request,
    persona_request,
    synthesis_request,
)
from masterplan.runtime import Runtime

log = logging.getLogger(__name__)

# A claim older than this belongs to a dead worker (above the task hard time limit).
PERSONA_LEASE_S = 330
# Synthesis waiting for personas that are still running (a chord fired early).
NOT_READY_WAIT_MS = 1000
# Back-off between error retries (not rate-limit waits, which use the provider's own wait).
ERROR_BACKOFF_MS = (2000, 8000)
TRANSIENT = {"server_error", "timeout", "overloaded"}


@dataclass(frozen=True)
class StepResult:
    """The small status a task returns through the broker (never LLM text)."""

    stage: str
    status: str

    def as_dict(self) -> dict[str, str]:
        return {"stage": self.stage, "status": self.status}


class Deferred(E.RetryLater):
    """The step must run again later; `is_error` counts against the error budget."""

    def __init__(self, wait_ms: int, reason: str, *, is_error: bool = False) -> None:
        super().__init__(wait_ms, reason)
        self.is_error = is_error


def _aware(dt: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns.
    return dt if dt.tzinfo else dt.replace(tzinfo=utcnow().tzinfo)


def _past_deadline(job: Job, wait_ms: int = 0) -> bool:
    return utcnow() + timedelta(milliseconds=wait_ms) > _aware(job.deadline_at)


def _deferred_row(exc: E.RetryLater) -> Attempt:
    waiting = [a for a in exc.attempts if a.wait_ms] or exc.attempts
    shortest = min(waiting, key=lambda a: a.wait_ms or 10**12) if waiting else None
    return Attempt(shortest.provider if shortest else "-", shortest.model if shortest else "-",
                   "deferred", wait_ms=exc.wait_ms, error=exc.reason)


def _transient(exc: E.AllProvidersFailed) -> bool:
    return any(a.outcome in TRANSIENT for a in exc.attempts)


def _run_stage(rt: Runtime, job: Job, stage: str, request: LLMRequest, errors_left: int, *,
               on_success: Callable[[Session, Completion], object],
               on_give_up: Callable[[Session, str], object]) -> bool:
    """Route one call and record its attempts with its outcome, in one transaction.

    True: the stage succeeded. False: it failed for good (recorded by `on_give_up`).
    Raises Deferred when it must run again later (the claim on a persona is handed back).
    """
    request = replace(request, tags={**request.tags, "job_id": job.id})
    try:
        routed = rt.router.route(request)
    except E.RetryLater as exc:
        with rt.sessions.begin() as s:
            q.record_calls(s, job_id=job.id, stage=stage, attempts=[*exc.attempts, _deferred_row(exc)])
            if _past_deadline(job, exc.wait_ms):
                on_give_up(s, f"still waiting for providers at the job deadline ({exc.reason})")
                return False
            if stage in PERSONA_KEYS:
                q.release_persona(s, job_id=job.id, persona=stage)
        raise Deferred(exc.wait_ms, exc.reason) from exc
    except E.AllProvidersFailed as exc:
        retry = errors_left > 0 and _transient(exc) and not _past_deadline(job)
        with rt.sessions.begin() as s:
            q.record_calls(s, job_id=job.id, stage=stage, attempts=exc.attempts)
            if not retry:
                on_give_up(s, str(exc))
                return False
            if stage in PERSONA_KEYS:
                q.release_persona(s, job_id=job.id, persona=stage)
        # Raised after the commit: the ledger rows and the released claim must persist.
        backoff = ERROR_BACKOFF_MS[max(-len(ERROR_BACKOFF_MS), -errors_left)]
        raise Deferred(backoff, str(exc), is_error=True) from exc
    with rt.sessions.begin() as s:
        q.record_calls(s, job_id=job.id, stage=stage, attempts=routed.attempts)
        on_success(s, routed.completion)
    return True


def _output(c: Completion) -> dict[str, Any] | None:
    return c.data.model_dump(mode="json") if c.data is not None else None


def run_persona(rt: Runtime, job_id: str, persona: str, *, errors_left: int = 2) -> StepResult:
    with rt.sessions.begin() as s:
        job = q.get_job(s, job_id=job_id)
        if job is None:
            raise LookupError(f"job {job_id} not found")
        claim = q.claim_persona(s, job_id=job_id, persona=persona, lease_s=PERSONA_LEASE_S,
                                mark_running=job.status == JobStatus.QUEUED.value)
        if claim == "finished":
            status = next(r.status for r in q.persona_runs(s, job_id=job_id) if r.persona == persona)
            return StepResult(persona, status)
        if claim == "busy":
            # Another delivery of this task holds it; look again later rather than pay twice.
            raise Deferred(5000, "another worker is running this persona")
        if _past_deadline(job):
            q.finish_persona(s, job_id=job_id, persona=persona, status=RunStatus.FAILED,
                             error="job deadline passed before this persona ran")
            return StepResult(persona, RunStatus.FAILED.value)

    def stored(s: Session, c: Completion) -> None:
        q.finish_persona(s, job_id=job_id, persona=persona, status=RunStatus.SUCCEEDED,
                         output=_output(c), provider=c.provider, model=c.model,
                         latency_ms=c.latency_ms)

    def give_up(s: Session, reason: str) -> None:
        q.finish_persona(s, job_id=job_id, persona=persona, status=RunStatus.FAILED, error=reason)

    request = persona_request(persona, job.idea, job.context,
                              max_tokens=rt.settings.persona_max_tokens)
    ok = _run_stage(rt, job, persona, request, errors_left, on_success=stored, on_give_up=give_up)
    return StepResult(persona, (RunStatus.SUCCEEDED if ok else RunStatus.FAILED).value)


def _fail_job(s: Session, job_id: str, reason: str) -> bool:
    return q.update_job(s, job_id=job_id, status=JobStatus.FAILED.value, error=reason,
                        finished_at=utcnow())


def synthesize(rt: Runtime, job_id: str, *, errors_left: int = 2) -> StepResult:
    stage = Stage.SYNTHESIS.value
    with rt.sessions.begin() as s:
        job = q.get_job(s, job_id=job_id)
        if job is None:
            raise LookupError(f"job {job_id} not found")
        if job.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
            return StepResult(stage, job.status)
        if job.synthesis is not None:
            return StepResult(stage, "succeeded")
        runs = q.persona_runs(s, job_id=job_id)
        unfinished = [r.persona for r in runs if r.status not in FINISHED]
        if unfinished:
            if not _past_deadline(job):
                # The database, not the chord counter, says whether every persona is done.
                raise Deferred(NOT_READY_WAIT_MS, f"personas still running: {', '.join(unfinished)}")
            for p in unfinished:
                q.finish_persona(s, job_id=job_id, persona=p, status=RunStatus.FAILED,
                                 error="job deadline passed")
            runs = q.persona_runs(s, job_id=job_id)
        findings = {r.persona: r.output for r in runs if r.status == RunStatus.SUCCEEDED.value}
        needed = rt.settings.min_personas
        if len(findings) < needed:
            failed = "; ".join(f"{r.persona}: {r.error}" for r in runs
                               if r.status != RunStatus.SUCCEEDED.value)
            _fail_job(s, job_id, f"only {len(findings)} of {len(runs)} personas succeeded "
                                 f"(need {needed}): {failed}")
            return StepResult(stage, JobStatus.FAILED.value)

    request = synthesis_request(job.idea, job.context, findings,
                                max_tokens=rt.settings.synthesis_max_tokens)
    ok = _run_stage(
        rt, job, stage, request, errors_left,
        on_success=lambda s, c: q.update_job(s, job_id=job_id, synthesis=_output(c),
                                             synthesis_provider=c.provider),
        on_give_up=lambda s, why: _fail_job(s, job_id, f"synthesis failed: {why}"),
    )
    return StepResult(stage, "succeeded" if ok else JobStatus.FAILED.value)


def critique(rt: Runtime, job_id: str, *, errors_left: int = 2) -> StepResult:
    stage = Stage.CRITIQUE.value
    with rt.sessions.begin() as s:
        job = q.get_job(s, job_id=job_id)
        if job is None:
            raise LookupError(f"job {job_id} not found")
        if job.critique is not None:
            return StepResult(stage, "succeeded")
        if job.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value) or job.synthesis is None:
            return StepResult(stage, "skipped")
    request = critique_request(job.idea, job.synthesis, max_tokens=rt.settings.critique_max_tokens)
    # The critique is the last stage: storing it finishes the job in the same transaction, one
    # hop and one transaction earlier than `finalize` (which then only confirms it).
    ok = _run_stage(
        rt, job, stage, request, errors_left,
        on_success=lambda s, c: q.update_job(s, job_id=job_id, critique=_output(c),
                                             critique_provider=c.provider,
                                             status=JobStatus.SUCCEEDED.value,
                                             finished_at=utcnow()),
        on_give_up=lambda s, why: _fail_job(s, job_id, f"devil's advocate failed: {why}"),
    )
    return StepResult(stage, "succeeded" if ok else JobStatus.FAILED.value)


def finalize(rt: Runtime, job_id: str) -> StepResult:
    with rt.sessions.begin() as s:
        job = q.get_job(s, job_id=job_id)
        if job is None:
            raise LookupError(f"job {job_id} not found")
        status = job.status
        if status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            if job.synthesis is not None and job.critique is not None:
                closed = q.update_job(s, job_id=job_id, status=JobStatus.SUCCEEDED.value,
                                      finished_at=utcnow())
                status = JobStatus.SUCCEEDED.value
            else:
                closed = _fail_job(s, job_id,
                                   "the pipeline ended without a synthesis and a critique")
                status = JobStatus.FAILED.value
            if not closed:  # closed by another step in the meantime: read what it wrote
                status = q.get_job(s, job_id=job_id).status  # type: ignore[union-attr]
    log.info("job %s finished: %s", job_id, status)
    return StepResult("finalize", status)


def fail_job(rt: Runtime, job_id: str, reason: str) -> None:
    """Used when a step dies unexpectedly: the job ends failed, its partial results kept."""
    with rt.sessions.begin() as s:
        _fail_job(s, job_id, reason)


def record_persona_crash(rt: Runtime, job_id: str, persona: str, exc: BaseException) -> StepResult:
    """An unexpected error in a persona step: recorded as that persona's failure."""
    with rt.sessions.begin() as s:
        q.finish_persona(s, job_id=job_id, persona=persona, status=RunStatus.FAILED,
                         error=f"crashed: {type(exc).__name__}: {exc}")
    return StepResult(persona, RunStatus.FAILED.value)
