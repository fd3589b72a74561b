"""An interview's life: started, answered, each turn run by a worker, then a masterplan job.

The API and the terminal call `start`, `answer` and `job_input`; a worker runs each turn
(`run_turn`, from the task on the `interactive` queue) and writes its events to the turn's Redis
Stream (masterplan/turnstream.py), which the API relays to the founder as Server-Sent Events.

A turn runs in two phases, each stored before the next: the question (streamed; fallback only
before its first token, so the founder never reads two providers' text spliced together), then
the structured part (a second, schema-validated call). A phase that must wait for providers
raises `Wait`, and the task is retried with a countdown; a retry after the question was stored
only makes the structured call. A structured part that failed on every provider is `null` with
its reason: the conversation goes on without it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from masterplan import errors as E
from masterplan import interview as iv
from masterplan import turnstream as ts
from masterplan.db import queries as q
from masterplan.db.models import (
    Interview,
    InterviewStatus,
    InterviewTurn,
    TurnStatus,
    utcnow,
)
from masterplan.llm.base import StreamEnd
from masterplan.llm.router import Attempt, reasons
from masterplan.runtime import Runtime

log = logging.getLogger(__name__)


class InterviewError(E.MasterplanError):
    """A request the interview cannot take; `status` is the HTTP status that says why."""

    status = 409

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(InterviewError):
    status = 404


class Wait(E.MasterplanError):
    """Every provider must be waited for: run the turn again after `wait_ms`."""

    def __init__(self, wait_ms: int, reason: str) -> None:
        super().__init__(f"retry in {wait_ms} ms: {reason}")
        self.wait_ms = wait_ms


# -- reading ---------------------------------------------------------------------------------
def get(s: Session, interview_id: str, owner: str | None = None) -> Interview:
    stmt = sa.select(Interview).where(Interview.id == interview_id) \
        .execution_options(populate_existing=True)
    if owner is not None:
        stmt = stmt.where(Interview.owner == owner)
    found = s.scalars(stmt).one_or_none()
    if found is None:
        raise NotFound(f"no interview {interview_id} for this API key")
    return found


def turns(s: Session, interview_id: str) -> list[InterviewTurn]:
    return list(s.scalars(sa.select(InterviewTurn).where(InterviewTurn.interview_id == interview_id)
                          .order_by(InterviewTurn.n).execution_options(populate_existing=True)))


def _exchange(t: InterviewTurn) -> iv.Exchange:
    return iv.Exchange(t.answer, t.question if t.status == TurnStatus.DONE.value else None)


def _aware(dt: Any) -> Any:
    return dt if dt is None or dt.tzinfo else dt.replace(tzinfo=utcnow().tzinfo)


def _lost(rt: Runtime, t: InterviewTurn) -> bool:
    age = utcnow() - _aware(t.created_at)
    return t.status == TurnStatus.STREAMING.value and \
        age > timedelta(seconds=rt.settings.interview_turn_timeout_s)


def fail_if_lost(rt: Runtime, s: Session, t: InterviewTurn) -> bool:
    """A turn still `streaming` past INTERVIEW_TURN_TIMEOUT_S was lost with its worker: failed,
    so the founder can answer again. True when it was."""
    if not _lost(rt, t):
        return False
    t.status, t.error, t.finished_at = TurnStatus.FAILED.value, \
        "the turn was lost (its worker stopped); answer again to go on", utcnow()
    return True


# -- the founder's side ----------------------------------------------------------------------
def start(rt: Runtime, *, owner: str, idea: str) -> tuple[str, int]:
    """A new interview and its first turn (the first question): (interview id, turn number)."""
    now = utcnow()
    with rt.sessions.begin() as s:
        interview = Interview(id=str(uuid.uuid4()), owner=owner, idea=idea,
                              status=InterviewStatus.OPEN.value, created_at=now, updated_at=now)
        s.add(interview)
        s.flush()
        s.add(InterviewTurn(interview_id=interview.id, n=1, status=TurnStatus.STREAMING.value,
                            created_at=now))
        return interview.id, 1


def answer(rt: Runtime, *, owner: str, interview_id: str, text: str) -> int:
    """The founder's answer, stored as the next turn (to be run). Raises NotFound (another
    key's interview too), InterviewError when the interview is finished or a turn is still
    streaming. Nothing is stored when it raises."""
    try:
        with rt.sessions.begin() as s:
            interview = get(s, interview_id, owner)
            if interview.status != InterviewStatus.OPEN.value:
                raise InterviewError(f"interview {interview_id} is finished ({_why_done(interview)});"
                                     f" build its masterplan with POST /v1/interviews/"
                                     f"{interview_id}/masterplan")
            last = turns(s, interview_id)[-1]
            if last.status == TurnStatus.STREAMING.value and not fail_if_lost(rt, s, last):
                raise InterviewError(f"turn {last.n} is still streaming; answer once it has "
                                     f"ended (GET /v1/interviews/{interview_id}/turns/{last.n}/"
                                     "events follows it)")
            n = last.n + 1
            s.add(InterviewTurn(interview_id=interview_id, n=n, answer=text,
                                status=TurnStatus.STREAMING.value, created_at=utcnow()))
            interview.updated_at = utcnow()
            s.flush()
            return n
    except IntegrityError:
        # Another answer to the same turn was stored first.
        raise InterviewError(f"another answer to interview {interview_id} was just stored; "
                             "read the interview and answer its latest question") from None


def _why_done(interview: Interview) -> str:
    if interview.job_id:
        return f"its masterplan is job {interview.job_id}"
    return "the interviewer has enough, or the turns ran out"


def job_input(rt: Runtime, *, owner: str, interview_id: str) -> tuple[Interview, dict[str, Any]]:
    """The interview (checked: this key's, no turn streaming) and the context its masterplan
    job gets: the transcript and the tracked assumptions."""
    with rt.sessions() as s:
        interview = get(s, interview_id, owner)
        rows = turns(s, interview_id)
        streaming = [t for t in rows if t.status == TurnStatus.STREAMING.value and not _lost(rt, t)]
        if streaming and not interview.job_id:
            raise InterviewError(f"turn {streaming[0].n} is still streaming; build the "
                                 "masterplan once it has ended")
        tracked = (interview.assumptions or {}).get("items", [])
        context = iv.job_context(interview.idea, [_exchange(t) for t in rows], tracked,
                                 interview.id)
        s.expunge(interview)
        return interview, context


def built(rt: Runtime, *, interview_id: str, job_id: str) -> str:
    """Record the job built from the interview (which ends it); the first one recorded wins."""
    with rt.sessions.begin() as s:
        interview = get(s, interview_id)
        if interview.job_id is None:
            interview.job_id = job_id
            interview.status = InterviewStatus.DONE.value
            interview.updated_at = utcnow()
        return interview.job_id


# -- the worker's side -----------------------------------------------------------------------
@dataclass
class _Turn:
    interview_id: str
    idea: str
    n: int
    before: list[iv.Exchange]  # the turns before this one
    answer: str | None
    question: str | None  # stored once the text phase succeeded
    status: str
    evaluation: dict[str, Any] | None
    tracked: list[dict[str, Any]]
    usage: dict[str, Any]
    lost: bool


def _load(rt: Runtime, interview_id: str, n: int) -> _Turn | None:
    with rt.sessions.begin() as s:
        try:
            interview = get(s, interview_id)
        except NotFound:
            return None
        rows = turns(s, interview_id)
        t = next((r for r in rows if r.n == n), None)
        if t is None:
            return None
        lost = fail_if_lost(rt, s, t)
        return _Turn(interview_id, interview.idea, n, [_exchange(r) for r in rows if r.n < n],
                     t.answer, t.question, t.status, interview.evaluation,
                     list((interview.assumptions or {}).get("items", [])),
                     dict(t.usage or {}), lost)


def _usage(so_far: dict[str, Any], attempts: list[Attempt]) -> dict[str, Any]:
    calls = [a for a in attempts if a.latency_ms or a.input_tokens or a.output_tokens]
    return {
        "calls": so_far.get("calls", 0) + len(calls),
        "input_tokens": so_far.get("input_tokens", 0) + sum(a.input_tokens for a in attempts),
        "output_tokens": so_far.get("output_tokens", 0) + sum(a.output_tokens for a in attempts),
        "cost_usd": round(so_far.get("cost_usd", 0.0) + sum(a.cost_usd for a in attempts), 8),
    }


def _record(rt: Runtime, turn: _Turn, attempts: list[Attempt], **values: Any) -> None:
    """The phase's ledger rows and the turn's new values, in one transaction."""
    turn.usage = _usage(turn.usage, attempts)
    with rt.sessions.begin() as s:
        q.record_calls(s, interview_id=turn.interview_id, stage=iv.STAGE, attempts=attempts)
        # Only while it runs: a turn failed as lost meanwhile stays failed (its calls, paid
        # for, are on the ledger all the same).
        s.execute(sa.update(InterviewTurn).where(InterviewTurn.interview_id == turn.interview_id,
                                                 InterviewTurn.n == turn.n,
                                                 InterviewTurn.status == TurnStatus.STREAMING.value)
                  .values(usage=turn.usage, **values))
        s.execute(sa.update(Interview).where(Interview.id == turn.interview_id)
                  .values(updated_at=utcnow()))


def _seen_tokens(rt: Runtime, key: str) -> bool:
    return any(e.name == ts.TOKEN for e in ts.decode(rt.redis.xrange(key, count=1000)))


def run_turn(rt: Runtime, interview_id: str, n: int) -> str:
    """Run (or finish) turn `n`: stream its question, then make its structured part. Returns
    how it ended ("done", "failed", or "skipped" for a turn that is not waiting to run); raises
    Wait when every provider must be waited for first."""
    turn = _load(rt, interview_id, n)
    key = ts.key(rt.settings.redis_key_prefix, interview_id, n)
    out = ts.TurnWriter(rt.redis, key, rt.settings.interview_stream_ttl_s)
    if turn is None or turn.status != TurnStatus.STREAMING.value:
        if turn is not None and turn.lost:
            out.emit(ts.ERROR, {"error": "the turn was lost (its worker stopped)", "partial": ""})
            out.emit(ts.END, {})
        return "skipped"
    if turn.question is None:
        if _seen_tokens(rt, key):
            # A redelivery after a worker died mid-stream: the reader has part of a question;
            # another provider's answer must not be spliced onto it.
            return _fail_text(rt, turn, out, [], "the worker streaming this turn was lost",
                              partial="")
        question = _ask(rt, turn, out)
        if question is None:
            return "failed"
        turn.question = question
    return _structure(rt, turn, out)


def _ask(rt: Runtime, turn: _Turn, out: ts.TurnWriter) -> str | None:
    """The text phase: the question streamed into the turn's events, then stored."""
    request = iv.question_request(turn.idea, [*turn.before, iv.Exchange(turn.answer, None)],
                                  max_tokens=rt.settings.interview_question_max_tokens)
    request = replace(request, tags={**request.tags, "interview_id": turn.interview_id})
    attempts: list[Attempt] = []
    started = time.perf_counter()
    first_ms: int | None = None
    text: list[str] = []
    end: StreamEnd | None = None
    try:
        for item in rt.router.stream(request, attempts):
            if isinstance(item, StreamEnd):
                end = item
            else:
                if first_ms is None:
                    first_ms = int((time.perf_counter() - started) * 1000)
                text.append(item)
                out.emit(ts.TOKEN, {"text": item})
    except E.RetryLater as exc:
        if _lost_soon(rt, turn, exc.wait_ms):
            _fail_text(rt, turn, out, attempts, "still waiting for providers at the turn's time "
                       f"limit: {exc.reason}", partial="")
            return None
        _record(rt, turn, attempts)
        out.emit(ts.WAIT, {"wait_ms": exc.wait_ms, "reason": exc.reason})
        raise Wait(exc.wait_ms, exc.reason) from exc
    except E.StreamInterrupted as exc:
        _fail_text(rt, turn, out, attempts, str(exc), partial=exc.partial_text)
        return None
    except E.AllProvidersFailed as exc:
        _fail_text(rt, turn, out, attempts, str(exc), partial="")
        return None
    question = "".join(text)
    _record(rt, turn, attempts, question=question, first_token_ms=first_ms,
            provider=end.provider if end else None, model=end.model if end else None)
    return question


def _fail_text(rt: Runtime, turn: _Turn, out: ts.TurnWriter, attempts: list[Attempt],
               error: str, *, partial: str) -> str:
    _record(rt, turn, attempts, status=TurnStatus.FAILED.value, error=error,
            question=partial or None, finished_at=utcnow())
    out.emit(ts.ERROR, {"error": error, "partial": partial})
    out.emit(ts.END, {})
    log.warning("interview %s turn %d failed: %s", turn.interview_id, turn.n, error)
    return "failed"


def _structure(rt: Runtime, turn: _Turn, out: ts.TurnWriter) -> str:
    """The structured phase; then the turn is done, whatever came of it."""
    settings = rt.settings
    request = iv.structure_request(turn.idea, [*turn.before, iv.Exchange(turn.answer,
                                                                         turn.question)],
                                   turn.tracked, max_tokens=settings.interview_eval_max_tokens)
    attempts: list[Attempt] = []
    structured: dict[str, Any] | None = None
    error: str | None = None
    try:
        routed = rt.router.route(request, attempts=attempts)
    except E.RetryLater as exc:
        if not _lost_soon(rt, turn, exc.wait_ms):
            _record(rt, turn, attempts)
            out.emit(ts.WAIT, {"wait_ms": exc.wait_ms, "reason": exc.reason})
            raise Wait(exc.wait_ms, exc.reason) from exc
        error = f"still waiting for providers at the turn's time limit: {exc.reason}"
    except E.AllProvidersFailed as exc:
        why = "; ".join(f"{p}: {r}" for p, r in reasons(attempts).items())
        error = f"the structured part failed on every provider ({why or exc})"
    else:
        data = routed.completion.data
        assert isinstance(data, iv.TurnOutput)
        got = data.model_dump(mode="json")
        tracked = iv.track(turn.tracked, got["assumptions"], turn.n)
        structured = {"eval": iv.with_moves(got["eval"], turn.evaluation),
                      "assumptions": tracked, "choices": data.choices.as_list(),
                      "done": data.done}
    finished = (structured is not None and structured["done"]) or \
        turn.n >= settings.interview_max_turns
    _record(rt, turn, attempts, structured=structured, structured_error=error,
            status=TurnStatus.DONE.value, finished_at=utcnow())
    with rt.sessions.begin() as s:
        values: dict[str, Any] = {"updated_at": utcnow()}
        if structured is not None:
            values |= {"evaluation": structured["eval"],
                       "assumptions": {"items": structured["assumptions"]}}
        if finished:
            values["status"] = InterviewStatus.DONE.value
        s.execute(sa.update(Interview).where(Interview.id == turn.interview_id,
                                             Interview.status == InterviewStatus.OPEN.value)
                  .values(**values))
    out.emit(ts.TURN, {"n": turn.n, "question": turn.question, "structured": structured,
                       "error": error, "finished": finished, "usage": turn.usage})
    out.emit(ts.END, {})
    return "done"


def _lost_soon(rt: Runtime, turn: _Turn, wait_ms: int) -> bool:
    """Whether waiting `wait_ms` more would take the turn past INTERVIEW_TURN_TIMEOUT_S."""
    with rt.sessions() as s:
        created = s.scalar(sa.select(InterviewTurn.created_at).where(
            InterviewTurn.interview_id == turn.interview_id, InterviewTurn.n == turn.n))
    age = (utcnow() - _aware(created)).total_seconds() if created else 0.0
    return age + wait_ms / 1000 > rt.settings.interview_turn_timeout_s * 0.9
