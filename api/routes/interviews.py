"""The interview: POST /v1/interviews, GET /v1/interviews/{id}, POST .../turns (the next turn
as Server-Sent Events), GET .../turns/{n}/events (resume), POST .../masterplan.

A turn runs on a worker (`interactive` queue), which writes its events to a Redis Stream; the
API relays them (api/turn_relay.py), holding no thread per open stream. See
masterplan/conversation.py for the turn itself and masterplan/turnstream.py for its events.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any
from uuid import UUID

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import AuthenticatedRoute, OwnerDep, RuntimeDep
from api.routes.events import HEARTBEAT, EventStream
from api.routes.jobs import daily_budget_refusal, submit
from api.schemas import (
    AnswerCreate,
    InterviewCreate,
    InterviewPublic,
    JobCreate,
    JobPublic,
    TurnPublic,
    TurnUsage,
)
from api.turn_relay import Reader, StreamsFull, TurnRelay, position
from masterplan import conversation as cv
from masterplan import turnstream as ts
from masterplan.db.models import Interview, InterviewStatus, InterviewTurn, TurnStatus
from masterplan.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/interviews", tags=["interviews"], route_class=AuthenticatedRoute)
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
STREAM = {"content": {"text/event-stream": {}}, "description": (
    "The turn's events: `token` ({text}) as the interviewer writes, `wait` ({wait_ms, reason}) "
    "while every provider must be waited for, then `turn` ({n, question, structured, error, "
    "finished, usage}) or `error` ({error, partial}), and `end`. Each event has an `id:`; "
    "reconnect to `GET /v1/interviews/{id}/turns/{n}/events` with `Last-Event-ID` to resume.")}
NOT_FOUND = {"description": "No such interview (or turn) for this API key"}


def relay_of(app: FastAPI, rt: Runtime) -> TurnRelay:
    relay: TurnRelay | None = getattr(app.state, "turn_relay", None)
    if relay is None:
        s = rt.settings
        relay = TurnRelay(rt.redis, max_streams=s.max_streams, max_per_key=s.max_streams_per_key)
        app.state.turn_relay = relay
    return relay


def _events_url(interview_id: str, n: int) -> str:
    return f"/v1/interviews/{interview_id}/turns/{n}/events"


def _usage(rows: list[dict[str, Any]]) -> TurnUsage:
    return TurnUsage(calls=sum(r.get("calls", 0) for r in rows),
                     input_tokens=sum(r.get("input_tokens", 0) for r in rows),
                     output_tokens=sum(r.get("output_tokens", 0) for r in rows),
                     cost_usd=round(sum(r.get("cost_usd", 0.0) for r in rows), 8))


def _public(interview: Interview, turns: list[InterviewTurn]) -> InterviewPublic:
    out = [TurnPublic(
        n=t.n, status=t.status, answer=t.answer, question=t.question, structured=t.structured,
        structured_error=t.structured_error, error=t.error, provider=t.provider, model=t.model,
        first_token_ms=t.first_token_ms, usage=_usage([t.usage or {}]), created_at=t.created_at,
        finished_at=t.finished_at, events=_events_url(interview.id, t.n)) for t in turns]
    return InterviewPublic(
        id=interview.id, idea=interview.idea, status=interview.status,
        created_at=interview.created_at, turns=out, evaluation=interview.evaluation,
        assumptions=(interview.assumptions or {}).get("items", []), job_id=interview.job_id,
        usage=_usage([t.usage or {} for t in turns]))


def _read(rt: Runtime, interview_id: str, owner: str) -> InterviewPublic:
    with rt.sessions() as s:
        interview = cv.get(s, interview_id, owner)
        return _public(interview, cv.turns(s, interview_id))


def _check_budget(rt: Runtime, owner: str) -> None:
    with rt.sessions() as s:
        refusal = daily_budget_refusal(s, rt, owner)
    if refusal is not None:
        raise refusal


def _refused(exc: cv.InterviewError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


def _enqueue_or_undo(rt: Runtime, interview_id: str, n: int) -> None:
    """Publish the turn; when the broker is away, remove what was stored for it (the whole
    interview for its first turn) and answer 503: the founder retries the same request."""
    from tasks.interview import enqueue_turn

    try:
        enqueue_turn(interview_id, n)
    except Exception as exc:  # noqa: BLE001 - any broker failure
        log.warning("interview %s turn %d not queued, undone: %s", interview_id, n, exc)
        with rt.sessions.begin() as s:
            if n == 1:
                s.execute(sa.delete(Interview).where(Interview.id == interview_id))
            else:
                s.execute(sa.delete(InterviewTurn).where(InterviewTurn.interview_id == interview_id,
                                                         InterviewTurn.n == n))
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the task queue is unreachable, nothing was stored; retry in a few "
                            "seconds", headers={"Retry-After": "5"}) from None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=InterviewPublic, responses={
    201: {"description": "The interview, its first turn streaming: read it at `turns[0].events`."},
    429: {"description": "This API key spent KEY_DAILY_BUDGET_USD today."},
    503: {"description": "The task queue is unreachable; nothing was stored."}})
def create(body: InterviewCreate, owner: OwnerDep, rt: RuntimeDep, response: Response
           ) -> InterviewPublic:
    """Start an interview: the interviewer's first question streams at once."""
    _check_budget(rt, owner)
    interview_id, n = cv.start(rt, owner=owner, idea=body.idea)
    _enqueue_or_undo(rt, interview_id, n)
    response.headers["Location"] = f"/v1/interviews/{interview_id}"
    return _read(rt, interview_id, owner)


@router.get("/{interview_id}", response_model=InterviewPublic, responses={404: NOT_FOUND})
def read(interview_id: UUID, owner: OwnerDep, rt: RuntimeDep) -> InterviewPublic:
    """Every turn, the latest evaluation, the tracked assumptions, usage and cost by turn."""
    try:
        return _read(rt, str(interview_id), owner)
    except cv.NotFound as exc:
        raise _refused(exc) from None


@router.post("/{interview_id}/turns", response_class=StreamingResponse, responses={
    200: STREAM, 404: NOT_FOUND,
    409: {"description": "The interview is finished, or its latest turn is still streaming."},
    429: {"description": "Too many streams open for this API key or this API process, or this "
          "key spent KEY_DAILY_BUDGET_USD today."},
    503: {"description": "The task queue is unreachable; the answer was not stored."}})
async def answer(interview_id: UUID, body: AnswerCreate, owner: OwnerDep, rt: RuntimeDep,
                 request: Request) -> EventStream:
    """Answer the latest question; the response is the next turn, streamed."""
    relay = relay_of(request.app, rt)
    await run_in_threadpool(_check_budget, rt, owner)
    try:
        relay.check_room(owner)
        n = await run_in_threadpool(partial(cv.answer, rt, owner=owner,
                                            interview_id=str(interview_id), text=body.answer))
    except StreamsFull as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, exc.detail,
                            headers={"Retry-After": "5"}) from None
    except cv.InterviewError as exc:
        raise _refused(exc) from None
    reader = relay.open(ts.key(rt.settings.redis_key_prefix, str(interview_id), n), owner)
    try:
        await run_in_threadpool(_enqueue_or_undo, rt, str(interview_id), n)
    except HTTPException:
        reader.close()
        raise
    return EventStream(_relayed(rt, reader, str(interview_id), n), on_close=reader.close)


@router.get("/{interview_id}/turns/{n}/events", response_class=StreamingResponse,
            responses={200: STREAM, 404: NOT_FOUND, 429: {"description": "Too many streams."}})
async def turn_events(interview_id: UUID, n: int, owner: OwnerDep, rt: RuntimeDep,
                      request: Request, last_event_id: Annotated[str | None, Header()] = None
                      ) -> EventStream:
    """A turn's events from the start, or after `Last-Event-ID`. A turn whose events have
    expired is told from the database: its whole text as one `token`, then `turn`/`error`."""
    iid = str(interview_id)
    after = last_event_id if last_event_id and _EVENT_ID.match(last_event_id) else ts.START
    key = ts.key(rt.settings.redis_key_prefix, iid, n)

    def look() -> tuple[InterviewTurn | None, bool, int]:
        with rt.sessions() as s:
            interview = cv.get(s, iid, owner)
            rows = cv.turns(s, iid)
            turn = next((t for t in rows if t.n == n), None)
            if turn is not None:
                s.expunge(turn)
            ended = interview.status != InterviewStatus.OPEN.value and rows[-1].n == n
        return turn, ended, int(rt.redis.exists(key))

    try:
        turn, ended, kept = await run_in_threadpool(look)
    except cv.NotFound as exc:
        raise _refused(exc) from None
    if turn is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"interview {iid} has no turn {n}")
    if turn.status != TurnStatus.STREAMING.value and not kept:
        return EventStream(_from_db(turn, after, ended))
    try:
        reader = relay_of(request.app, rt).open(key, owner, after)
    except StreamsFull as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, exc.detail,
                            headers={"Retry-After": "5"}) from None
    return EventStream(_relayed(rt, reader, iid, n), on_close=reader.close)


async def _relayed(rt: Runtime, reader: Reader, interview_id: str, n: int) -> AsyncIterator[bytes]:
    """The relay's events until `end`, a comment each STREAM_HEARTBEAT_S while quiet; a turn
    whose worker was lost (past INTERVIEW_TURN_TIMEOUT_S) ends with an `error`."""
    import asyncio

    beat, opened = rt.settings.stream_heartbeat_s, time.monotonic()
    try:
        while True:
            try:
                async with asyncio.timeout(beat):
                    events = await reader.queue.get()
            except TimeoutError:
                # The database is asked only once the turn may be lost: it is at least as old
                # as this stream.
                old = time.monotonic() - opened >= rt.settings.interview_turn_timeout_s
                if old and await run_in_threadpool(_lost, rt, interview_id, n):
                    for e in _db_events(None, "the turn was lost (its worker stopped)"):
                        yield e.frame()
                    return
                yield HEARTBEAT
                continue
            for event in events:
                yield event.frame()
                if event.name == ts.END:
                    return
    finally:
        reader.close()


def _lost(rt: Runtime, interview_id: str, n: int) -> bool:
    with rt.sessions.begin() as s:
        turn = next((t for t in cv.turns(s, interview_id) if t.n == n), None)
        return turn is not None and cv.fail_if_lost(rt, s, turn)


def _db_events(turn: InterviewTurn | None, error: str | None, finished: bool = False
               ) -> list[ts.Event]:
    """A turn told from its row (ids below any Redis Stream id, so they never collide)."""
    import json

    events: list[tuple[str, dict[str, Any]]] = []
    if turn is not None and turn.question and turn.status == TurnStatus.DONE.value:
        events.append((ts.TOKEN, {"text": turn.question}))
        events.append((ts.TURN, {"n": turn.n, "question": turn.question,
                                 "structured": turn.structured, "error": turn.structured_error,
                                 "finished": finished, "usage": turn.usage or {}}))
    else:
        why = error or (turn.error if turn is not None else None) or "the turn failed"
        events.append((ts.ERROR, {"error": why,
                                  "partial": (turn.question or "") if turn is not None else ""}))
    events.append((ts.END, {}))
    return [ts.Event(f"0-{i}", name, json.dumps(data, default=str))
            for i, (name, data) in enumerate(events, 1)]


async def _from_db(turn: InterviewTurn, after: str, finished: bool) -> AsyncIterator[bytes]:
    """A reader that saw part of the expired stream (its id is a Redis one) cannot be told
    where it was: it gets the rest without the text, which the `turn` event holds whole."""
    resumed = position(after)[0] > 0
    for event in _db_events(turn, None, finished):
        if resumed and event.name == ts.TOKEN:
            continue
        if resumed or position(event.id) > position(after):
            yield event.frame()


@router.post("/{interview_id}/masterplan", status_code=status.HTTP_202_ACCEPTED,
             response_model=JobPublic, responses={
                 200: {"model": JobPublic, "description": "The job already built from it."},
                 404: NOT_FOUND, 409: {"description": "A turn is still streaming."}})
def masterplan(interview_id: UUID, owner: OwnerDep, rt: RuntimeDep, response: Response
               ) -> JobPublic:
    """A masterplan job whose context is the interview's transcript and tracked assumptions
    (the personas' prompts use them). It ends the interview; asked again, it returns that job."""
    try:
        interview, context = cv.job_input(rt, owner=owner, interview_id=str(interview_id))
    except cv.InterviewError as exc:
        raise _refused(exc) from None
    job = submit(JobCreate(idea=interview.idea, context=context, max_cost_usd=None), owner, rt,
                 response,
                 idempotency_key=f"interview:{interview.id}")
    cv.built(rt, interview_id=interview.id, job_id=job.id)
    return job
