"""A job's stages as plain functions: ids in, database rows out.

Celery tasks are thin wrappers around these (tasks/pipeline.py). The database, not the broker,
says what has been done and what may run next:

- `run_stage` claims its stage under a heartbeat-renewed lease, makes the call, and in one
  transaction stores the result, the ledger rows, and what became ready because of it — the
  stages to publish next, returned to the task. A redelivered task does no work twice.
- `advance` looks at a job's rows and returns whatever is ready; the sweep (recovery.py) calls it
  for jobs that stopped moving, so a lost message, worker or Redis cannot strand a job.

A step that must wait raises Deferred; the task turns that into `retry(countdown=...)`. A step
whose result could not be stored (the database went away after the reply) raises StoreLater with
the result, so the retry stores it without calling (and paying) the provider again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from masterplan import admission, budget
from masterplan import errors as E
from masterplan.db import queries as q
from masterplan.db.models import FINISHED, OPEN, Job, JobStatus, RunStatus, utcnow
from masterplan.db.session import is_db_unavailable
from masterplan.llm.base import Completion
from masterplan.llm.outcomes import SKIPS, CallOutcome
from masterplan.llm.router import Attempt, reasons
from masterplan.ratelimit import Reservation
from masterplan.runtime import Runtime
from masterplan.settings import ProviderConfig, Settings
from masterplan.stages import JobInput, Pipeline, pipeline

log = logging.getLogger(__name__)

# Back-off between error retries (not rate-limit waits, which use the provider's own wait).
ERROR_BACKOFF_MS = (2000, 8000)
# A call that fits the job's ceiling once its other calls in flight settle looks again after this.
BUDGET_SETTLE_WAIT_MS = 1000


@dataclass(frozen=True)
class StepResult:
    """The small status a task returns (never LLM text), and the stages it made ready."""

    stage: str
    status: str
    ready: tuple[str, ...] = ()
    released: tuple[str, ...] = ()  # waiting jobs this one's end let in (masterplan/admission.py)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage, "status": self.status, "ready": list(self.ready)}
        return out | ({"released": list(self.released)} if self.released else {})

    def with_released(self, rt: Runtime, waiting: bool) -> StepResult:
        """When the job just ended and jobs wait, its slot goes to one of them (after the
        commit)."""
        if not waiting:
            return self
        return replace(self, released=tuple(admission.release_quietly(rt)))


class Deferred(E.RetryLater):
    """The step must run again later; `is_error` counts against the error budget."""

    def __init__(self, wait_ms: int, reason: str, *, is_error: bool = False) -> None:
        super().__init__(wait_ms, reason)
        self.is_error = is_error


class StoreLater(E.MasterplanError):
    """The result is known but the database is unreachable: retry storing `outcome`."""

    def __init__(self, outcome: dict[str, Any], cause: BaseException) -> None:
        super().__init__(f"the database is unreachable, the result is kept for a retry: {cause}")
        self.outcome = outcome


# -- what a job's rows say comes next (pure) -------------------------------------------------
@dataclass(frozen=True)
class Decision:
    ready: tuple[str, ...] = ()  # pending stages whose needs are met
    fail: str | None = None  # the job cannot succeed any more: why
    done: bool = False  # the last stage finished (succeeded unless `fail`)


def decide(p: Pipeline, settings: Settings, states: dict[str, tuple[str, str | None]]) -> Decision:
    """`states`: every stage's (status, error)."""
    last_status, last_error = states[p.last]
    if last_status in FINISHED:
        won = last_status == RunStatus.SUCCEEDED.value
        return Decision(done=True, fail=None if won else f"{p[p.last].title.lower()} failed: {last_error}")
    ready = []
    for sd in p.stages:
        if states[sd.name][0] != RunStatus.PENDING.value:
            continue
        needs = [states[n] for n in sd.needs]
        if any(status not in FINISHED for status, _ in needs):
            continue
        ok = sum(status == RunStatus.SUCCEEDED.value for status, _ in needs)
        if ok >= sd.required(settings):
            ready.append(sd.name)
            continue
        failed = "; ".join(f"{n}: {states[n][1]}" for n in sd.needs
                           if states[n][0] != RunStatus.SUCCEEDED.value)
        if len(sd.needs) == 1:
            return Decision(fail=f"{p[sd.needs[0]].title.lower()} failed: {states[sd.needs[0]][1]}")
        kinds = {p[n].kind for n in sd.needs}
        noun = f"{kinds.pop().value}s" if len(kinds) == 1 else "stages"
        return Decision(fail=f"only {ok} of {len(sd.needs)} {noun} succeeded "
                             f"(need {sd.required(settings)}): {failed}")
    return Decision(ready=tuple(ready))


def _conclude(s: Session, job_id: str, d: Decision) -> bool:
    """End the job when the decision says it has ended. True when it did and other jobs wait
    for a slot (asked in the same transaction: no extra one on the hot path)."""
    if d.fail is not None:
        fail_job(s, job_id, d.fail)
    elif d.done:
        q.update_job(s, job_id=job_id, status=JobStatus.SUCCEEDED.value, finished_at=utcnow())
    else:
        return False
    return q.any_waiting(s)


def fail_job(s: Session, job_id: str, reason: str) -> bool:
    """The job ends failed with its reason; finished stages keep their outputs."""
    q.lock_stage_states(s, job_id=job_id)  # lock order: stage rows, then the job
    if not q.update_job(s, job_id=job_id, status=JobStatus.FAILED.value, error=reason,
                        finished_at=utcnow()):
        return False
    q.finish_open_stages(s, job_id=job_id, status=RunStatus.FAILED, error=f"not run: {reason}",
                         only_pending=True)
    return True


def advance(s: Session, settings: Settings, job_id: str) -> tuple[str, ...]:
    """Idempotent, in the caller's transaction: end the job if its rows say it has ended, else
    return every stage that is ready and pending (the caller publishes them; a duplicate
    delivery is a no-op)."""
    states = q.lock_stage_states(s, job_id=job_id)
    job = q.get_job(s, job_id=job_id)
    if job is None or job.status not in OPEN or not states:
        return ()
    if _past_deadline(job):
        fail_job(s, job_id, "job deadline passed")
        return ()
    d = decide(pipeline(), settings, states)
    _conclude(s, job_id, d)
    return d.ready


# -- one stage -------------------------------------------------------------------------------
def _aware(dt: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns.
    return dt if dt.tzinfo else dt.replace(tzinfo=utcnow().tzinfo)


def _past_deadline(job: Job, wait_ms: int = 0) -> bool:
    return utcnow() + timedelta(milliseconds=wait_ms) > _aware(job.deadline_at)


def _deferred_row(exc: E.RetryLater) -> Attempt:
    waiting = [a for a in exc.attempts if a.wait_ms] or exc.attempts
    shortest = min(waiting, key=lambda a: a.wait_ms or 10**12) if waiting else None
    return Attempt(shortest.provider if shortest else "-", shortest.model if shortest else "-",
                   CallOutcome.DEFERRED, wait_ms=exc.wait_ms, error=exc.reason)


@dataclass
class Outcome:
    """What a stage's call came to, before it is stored (a plain dict travels in a retry)."""

    kind: str  # succeeded | failed | wait | error_wait | cancelled | budget
    claim_id: str
    waiting: bool = False  # this delivery continues a wait: its skips are not new information
    attempts: list[dict[str, Any]] = field(default_factory=list)
    output: dict[str, Any] | None = None
    provider: str | None = None
    model: str | None = None
    latency_ms: int | None = None
    wait_ms: int = 0
    error: str | None = None
    held_usd: float = 0.0  # the worst case its calls held against the job's ceiling

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        return cls(**d)


def _routed(rt: Runtime, job: Job, stage: str, claim_id: str, found: dict[str, dict[str, Any]],
            errors_left: int, waiting: bool) -> Outcome:
    """Make the stage's call; classify what came of it."""
    sd = pipeline()[stage]
    request = sd.build(JobInput(job.idea, job.context), found, rt.settings)
    request = replace(request, tags={**request.tags, "stage": stage, "job_id": job.id},
                      headroom=admission.headroom(rt, job.lane))
    attempts: list[Attempt] = []
    out = Outcome("failed", claim_id, waiting)

    def before_call(n: int, provider: ProviderConfig, reservation: Reservation) -> None:
        if job.max_cost_usd is not None:
            # Checks that the job is open too.
            out.held_usd += _hold(rt, job, provider, reservation, request.max_tokens, attempts)
        elif n > 0 and _job_closed(rt, job.id):
            # The claim just checked the job; later calls (fallback, repair) check again.
            raise E.JobClosed(f"job {job.id} is no longer open")

    try:
        with rt.leases.hold(claim_id):
            routed = rt.router.route(request, before_call=before_call, attempts=attempts)
    except E.JobClosed:
        out.kind, out.error = "cancelled", "job cancelled before this stage's next call"
    except E.BudgetExceeded as exc:
        out.kind, out.error = "budget", str(exc)
    except E.RetryLater as exc:
        attempts.append(_deferred_row(exc))
        out.kind, out.wait_ms, out.error = "wait", exc.wait_ms, exc.reason
        if _past_deadline(job, exc.wait_ms):
            out.kind = "failed"
            tried = [a for a in exc.attempts if a.outcome != CallOutcome.DEFERRED]
            why = "; ".join(f"{name}: {r}" for name, r in reasons(tried).items())
            out.error = f"still waiting for providers at the job deadline ({why or exc.reason})"
    except E.AllProvidersFailed as exc:
        out.error = str(exc)
        if errors_left > 0 and exc.transient \
                and not _past_deadline(job):
            out.kind = "error_wait"
            out.wait_ms = ERROR_BACKOFF_MS[max(-len(ERROR_BACKOFF_MS), -errors_left)]
    else:
        c: Completion = routed.completion
        out.kind = "succeeded"
        out.output = c.data.model_dump(mode="json") if c.data is not None else None
        out.provider, out.model, out.latency_ms = c.provider, c.model, c.latency_ms
    out.attempts = [asdict(a) for a in attempts]
    return out


def _hold(rt: Runtime, job: Job, provider: ProviderConfig, reservation: Reservation,
          max_tokens: int, attempts: list[Attempt]) -> float:
    """Hold the call's worst case against the job's ceiling; returns what was held. Raises
    JobClosed, BudgetExceeded when it can never fit, RetryLater when it fits once the job's
    other calls in flight have settled."""
    usd = budget.call_cost_usd(provider, reservation, max_tokens)
    with rt.sessions.begin() as s:
        if q.hold_budget(s, job_id=job.id, usd=usd):
            return usd
        now = q.get_job(s, job_id=job.id)
        if now is None or now.status not in OPEN:
            raise E.JobClosed(f"job {job.id} is no longer open")
        spent, held = q.job_spend(s, job_id=job.id)
    ceiling = job.max_cost_usd or 0.0
    call = f"the next call ({provider.name}, up to {budget.usd(usd)})"
    if spent + usd > ceiling:
        raise E.BudgetExceeded(f"{call} would take the job past its ceiling of "
                               f"{budget.usd(ceiling)} ({budget.usd(spent)} spent)")
    raise E.RetryLater(BUDGET_SETTLE_WAIT_MS, f"{call} waits for {budget.usd(held)} held by the "
                       f"job's calls in flight to settle within its ceiling", attempts)


def _job_closed(rt: Runtime, job_id: str) -> bool:
    with rt.sessions() as s:
        job = q.get_job(s, job_id=job_id)
        return job is None or job.status not in OPEN


def store(rt: Runtime, job_id: str, stage: str, out: Outcome) -> StepResult:
    """Store what a call came to, in one transaction: ledger rows, the stage's row, the job's
    end if this was it, and the stages this made ready (returned, for the task to publish)."""
    p = pipeline()
    try:
        if out.kind in ("wait", "error_wait"):
            with rt.sessions.begin() as s:
                if out.waiting and out.kind == "wait":
                    # The same wait goes on: keep the calls, fold the wait into its first row.
                    *calls, deferred = out.attempts
                    q.record_calls(s, job_id=job_id, stage=stage,
                                   attempts=[a for a in calls if a["outcome"] not in SKIPS])
                    q.extend_wait(s, job_id=job_id, stage=stage, row=deferred)
                else:
                    q.record_calls(s, job_id=job_id, stage=stage, attempts=out.attempts)
                q.release_stage(s, job_id=job_id, stage=stage, claim_id=out.claim_id,
                                not_before_ms=out.wait_ms)
                if out.held_usd:
                    q.release_budget(s, job_id=job_id, usd=out.held_usd)
        else:
            return _finish(rt, p, job_id, stage, out)
    except Exception as exc:
        if is_db_unavailable(exc):
            raise StoreLater(asdict(out), exc) from exc
        raise
    # Raised after the commit: the ledger rows and the released claim must persist.
    raise Deferred(out.wait_ms, out.error or "", is_error=out.kind == "error_wait")


def _finish(rt: Runtime, p: Pipeline, job_id: str, stage: str, out: Outcome) -> StepResult:
    with rt.sessions.begin() as s:
        states = q.lock_stage_states(s, job_id=job_id)
        # Every call made is on the ledger, even when another delivery finished the stage first.
        q.record_calls(s, job_id=job_id, stage=stage, attempts=out.attempts)
        if out.held_usd:
            q.release_budget(s, job_id=job_id, usd=out.held_usd)
        status = {"succeeded": RunStatus.SUCCEEDED, "cancelled": RunStatus.CANCELLED}.get(
            out.kind, RunStatus.FAILED)
        if not q.finish_stage(s, job_id=job_id, stage=stage, status=status, output=out.output,
                              provider=out.provider, model=out.model, error=out.error,
                              latency_ms=out.latency_ms):
            # Finished by another delivery, which advanced the job.
            return StepResult(stage, states[stage][0])
        if status is RunStatus.CANCELLED:
            return StepResult(stage, status.value)
        if out.kind == "budget":
            # The whole job is over its ceiling, not only this stage; what finished is kept.
            waiting = fail_job(s, job_id, f"budget: {out.error}") and q.any_waiting(s)
            result = StepResult(stage, status.value)
        else:
            states[stage] = (status.value, out.error)
            d = decide(p, rt.settings, states)
            waiting = _conclude(s, job_id, d)
            # Only the stages this one was needed for became ready just now.
            result = StepResult(stage, status.value,
                                tuple(n for n in d.ready if stage in p[n].needs))
    return result.with_released(rt, waiting)


def run_stage(rt: Runtime, job_id: str, stage: str, *, errors_left: int = 2,
              waiting: bool = False) -> StepResult:
    """Claim the stage, make its call, store the result. Idempotent per (job, stage).
    `waiting`: this delivery is the retry of a wait for providers."""
    sd = pipeline()[stage]
    claim_id = uuid.uuid4().hex
    with rt.sessions.begin() as s:
        job = q.get_job(s, job_id=job_id)
        if job is None:
            raise LookupError(f"job {job_id} not found")
        if job.status not in OPEN:
            return StepResult(stage, "closed")
        if _past_deadline(job):
            fail_job(s, job_id, "job deadline passed")
            return StepResult(stage, RunStatus.FAILED.value)
        needed = q.needed_stages(s, job_id=job_id, stages=sd.needs) if sd.needs else {}
        if any(status not in FINISHED for status, _ in needed.values()):
            # Delivered before what it needs has finished (only a re-drive can do that): the
            # last of them to finish publishes it again.
            return StepResult(stage, "not_ready")
        claim = q.claim_stage(s, job_id=job_id, stage=stage, claim_id=claim_id,
                              lease_s=rt.settings.stage_lease_s,
                              mark_running=job.status == JobStatus.QUEUED.value)
        if claim.state != "claimed":
            # finished: stored before; busy: another live delivery holds it; closed: cancelled.
            return StepResult(stage, claim.state)
    found = {n: out for n, (status, out) in needed.items()
             if status == RunStatus.SUCCEEDED.value and out is not None}
    return store(rt, job_id, stage, _routed(rt, job, stage, claim_id, found, errors_left, waiting))


def store_pending(rt: Runtime, job_id: str, stage: str, outcome: dict[str, Any]) -> StepResult:
    """The retry of a StoreLater: store the kept result; no call is made."""
    return store(rt, job_id, stage, Outcome.from_dict(outcome))


def record_crash(rt: Runtime, job_id: str, stage: str, exc: BaseException) -> StepResult:
    """An unexpected error in a step: recorded as that stage's failure, and the job advanced."""
    p = pipeline()
    error = f"crashed: {type(exc).__name__}: {exc}"
    with rt.sessions.begin() as s:
        states = q.lock_stage_states(s, job_id=job_id)
        if not q.finish_stage(s, job_id=job_id, stage=stage, status=RunStatus.FAILED, error=error):
            return StepResult(stage, states.get(stage, ("failed", None))[0])
        states[stage] = (RunStatus.FAILED.value, error)
        d = decide(p, rt.settings, states)
        waiting = _conclude(s, job_id, d)
        result = StepResult(stage, RunStatus.FAILED.value,
                            tuple(n for n in d.ready if stage in p[n].needs))
    return result.with_released(rt, waiting)


def cancel(rt: Runtime, job_id: str, *, owner: str) -> tuple[bool, bool]:
    """Cancel an open job: its pending stages will not run; running calls finish and are
    recorded. Returns (the owner has this job, it was open and is now cancelled)."""
    with rt.sessions.begin() as s:
        if q.get_job(s, job_id=job_id, owner=owner) is None:
            return False, False
        q.lock_stage_states(s, job_id=job_id)  # lock order: stage rows, then the job
        if not q.update_job(s, job_id=job_id, status=JobStatus.CANCELLED.value,
                            error="cancelled by the client", finished_at=utcnow()):
            return True, False
        q.finish_open_stages(s, job_id=job_id, status=RunStatus.CANCELLED, error="job cancelled",
                             only_pending=True)
        return True, True
