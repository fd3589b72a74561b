"""GET /v1/jobs/{id}/events: the job's progress as Server-Sent Events, until it finishes.

Streams are asynchronous and hold no thread: each waits on its queue, fed by the process's one
job watcher (`api.watch`), which is started lazily by the first stream and ends with the last.
GET /v1/streams tells a client how many streams it (and this process) has open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Annotated

import anyio
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from api.deps import OwnerDep, RuntimeDep
from api.job_state import Update, read_update
from api.watch import JobWatcher, StreamLimitReached, Subscription
from masterplan.runtime import Runtime

router = APIRouter(tags=["jobs"])
HEARTBEAT = b": keep-alive\n\n"


class EventStream(StreamingResponse):
    """A text/event-stream response that notices a client leaving while it has nothing to send.

    Starlette stops listening for the disconnect on ASGI servers of spec 2.4 and learns of it only
    at the next write, which for a quiet job is the next heartbeat; here the listener always runs,
    and `on_close` (the stream's slot and queue) runs however the response ends.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None] | None = None
                 ) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def body() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # the client left mid-write
                    tg.cancel_scope.cancel()

                tg.start_soon(body)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A failure in the stream reaches the server's log as itself, not wrapped.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            if self.on_close is not None:
                self.on_close()


def _frame(name: str, update: Update) -> bytes:
    return f"id: {update.id}\nevent: {name}\ndata: {update.data}\n\n".encode()


async def _finished(update: Update) -> AsyncIterator[bytes]:
    yield _frame("done", update)


async def _progress(sub: Subscription, first: Update, last_event_id: str | None,
                    heartbeat_s: float) -> AsyncIterator[bytes]:
    """A `progress` event per change (none for the state the client's Last-Event-ID names),
    `done` with the final state, and a comment every `heartbeat_s` so proxies keep the line."""
    sent = last_event_id
    update: Update | None = first
    try:
        while update is not None:  # None: the job was deleted
            if not update.open:
                yield _frame("done", update)
                return
            if update.id != sent:
                yield _frame("progress", update)
                sent = update.id
            while True:
                try:
                    # Not wait_for, which wraps each wait in a task: streams mostly wait.
                    async with asyncio.timeout(heartbeat_s):
                        update = await sub.queue.get()
                    break
                except TimeoutError:
                    yield HEARTBEAT
    finally:
        sub.close()


def watcher_of(app: FastAPI, rt: Runtime) -> JobWatcher:
    """The process's watcher, made on first use (the app factory does not need to know)."""
    w: JobWatcher | None = getattr(app.state, "job_watcher", None)
    if w is None or not w.usable_here():
        s = rt.settings
        w = JobWatcher(rt.engine, poll_s=s.stream_poll_s, max_streams=s.max_streams,
                       max_per_key=s.max_streams_per_key)
        app.state.job_watcher = w
    return w


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {}},
          "description": "`progress` events at each change, then `done`"},
    404: {"description": "No such job for this API key"},
    429: {"description": "Too many streams open for this API key or this API process"}})
async def events(job_id: str, owner: OwnerDep, rt: RuntimeDep, request: Request,
                 last_event_id: Annotated[str | None, Header()] = None) -> EventStream:
    """One `progress` event per change of the job's status or of a stage's status or provider,
    then `done` with the final state; a finished job answers `done` at once. Each event has an
    `id:`; a client that reconnects with `Last-Event-ID` is not sent that state again."""
    first = await run_in_threadpool(partial(read_update, rt.engine, job_id, owner=owner))
    if first is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    if not first.open:
        return EventStream(_finished(first))
    try:
        sub = watcher_of(request.app, rt).subscribe(job_id, owner, first)
    except StreamLimitReached as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, exc.detail,
                            headers={"Retry-After": str(exc.retry_after)}) from None
    return EventStream(_progress(sub, first, last_event_id, rt.settings.stream_heartbeat_s),
                       on_close=sub.close)


class StreamStats(BaseModel):
    """Event streams on the API process that answered (each process counts its own)."""

    open_for_this_key: int = Field(description="Streams this API key has open here.")
    max_per_key: int = Field(description="MAX_STREAMS_PER_KEY: beyond it a new stream gets 429.")
    open_in_process: int = Field(description="Streams open here, for every key.")
    max_in_process: int = Field(description="MAX_STREAMS: beyond it a new stream gets 429.")
    watched_jobs: int = Field(description="Jobs the watcher reads each tick.")
    watcher_running: bool = Field(description="Whether the watcher runs (only while a stream is open).")


@router.get("/v1/streams", tags=["jobs"], response_model=StreamStats)
async def streams(owner: OwnerDep, rt: RuntimeDep, request: Request) -> StreamStats:
    """How many event streams you, and everyone, have open on this API process, and the caps."""
    return StreamStats(**watcher_of(request.app, rt).stats(owner))
