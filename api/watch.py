"""One job watcher per API process: every event stream is fed from it.

A stream is an asyncio queue, not a thread: the watcher is one asyncio task that reads the state
of every watched job in one query per tick (in a worker thread, so the event loop never waits on
the database) and puts what changed on the queues of that job's streams. The database is the
source of truth every worker writes to, so nothing changes in the workers and the embedded
default (SQLite, no Redis) works the same.

The task starts with the first stream and ends when the last one closes; a job is queried only
while a stream watches it. Streams are capped per API key and per process
(`MAX_STREAMS_PER_KEY`, `MAX_STREAMS`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy.engine import Engine

from api.job_state import Update, read_changes

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5
# A stream's queue holds at most this many updates. Each is the whole state, so a reader that
# falls behind loses only intermediate states: the oldest is dropped, the newest always kept.
_QUEUE_SIZE = 8


class StreamLimitReached(Exception):
    """A new stream would pass MAX_STREAMS_PER_KEY or MAX_STREAMS; `detail` says what to do."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = RETRY_AFTER_S


@dataclass(eq=False)
class Subscription:
    """One open stream: its queue of updates (None: the job is gone) and its slot under the caps."""

    job_id: str
    owner: str
    watcher: JobWatcher
    queue: asyncio.Queue[Update | None] = field(
        default_factory=lambda: asyncio.Queue(_QUEUE_SIZE))
    closed: bool = False

    def put(self, item: Update | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    def close(self) -> None:
        """Give the slot back and stop watching for this stream (idempotent)."""
        if not self.closed:
            self.closed = True
            self.watcher.release(self)


class JobWatcher:
    """Polls the database for every watched job at once and fans changes out to the streams.

    Every method runs on the event loop; only the query runs in a thread, one at a time on its
    own limiter, so the watcher never takes a thread that the API's blocking endpoints need.
    """

    def __init__(self, engine: Engine, *, poll_s: float, max_streams: int, max_per_key: int) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self.max_streams, self.max_per_key = max_streams, max_per_key
        self._subs: dict[str, set[Subscription]] = {}
        self._last: dict[str, str] = {}  # job id -> signature of the state last sent
        self._per_key: Counter[str] = Counter()
        self._open = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._limiter = anyio.CapacityLimiter(1)
        self._failing = False
        self.ticks = 0

    # -- streams ---------------------------------------------------------------------------
    def subscribe(self, job_id: str, owner: str, first: Update) -> Subscription:
        """Open a stream on `job_id`, whose state the caller has just read (`first`)."""
        if self._open >= self.max_streams:
            raise StreamLimitReached(
                f"this API process already serves {self._open} event streams, its limit "
                f"(MAX_STREAMS={self.max_streams}); retry in a few seconds, or poll "
                "GET /v1/jobs/{id} instead")
        if self._per_key[owner] >= self.max_per_key:
            raise StreamLimitReached(
                f"this API key already has {self._per_key[owner]} event streams open, its limit "
                f"(MAX_STREAMS_PER_KEY={self.max_per_key}); close a stream you no longer read "
                "and retry, or poll GET /v1/jobs/{id} instead")
        sub = Subscription(job_id, owner, self)
        self._subs.setdefault(job_id, set()).add(sub)
        if self._last.setdefault(job_id, first.signature) != first.signature:
            # The watcher's last read of this job and this stream's differ, and either may be
            # the older: the next tick sends the job's current state to all its streams (each
            # skips a state it has already sent), so none is left showing a stale one.
            del self._last[job_id]
        self._per_key[owner] += 1
        self._open += 1
        self._ensure_running()
        return sub

    def release(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.job_id]
            self._last.pop(sub.job_id, None)
        self._per_key[sub.owner] -= 1
        if self._per_key[sub.owner] <= 0:
            del self._per_key[sub.owner]
        self._open -= 1
        if not self._subs:
            self._wake.set()  # the task ends now rather than after its sleep

    def usable_here(self) -> bool:
        """Whether streams on the running event loop can use this watcher: not when it serves
        streams on another loop (a TestClient outside `with` runs each request on its own)."""
        return self._loop is asyncio.get_running_loop() or (not self._subs and not self.running)

    def stats(self, owner: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "open_in_process": self._open, "max_in_process": self.max_streams,
            "max_per_key": self.max_per_key, "watched_jobs": len(self._subs),
            "watcher_running": self.running,
        }
        if owner is not None:
            out["open_for_this_key"] = self._per_key.get(owner, 0)
        return out

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(self._subs)

    # -- the task --------------------------------------------------------------------------
    def _ensure_running(self) -> None:
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="job-watcher")

    async def _run(self) -> None:
        try:
            while self._subs:
                known = {job_id: self._last.get(job_id) for job_id in self._subs}
                try:
                    changed = await anyio.to_thread.run_sync(read_changes, self.engine, known,
                                                             limiter=self._limiter)
                except Exception as exc:  # noqa: BLE001 - the database is away: streams wait
                    if not self._failing:  # once per outage, not four times a second
                        log.warning("job watcher: cannot read %d jobs (%s: %s); retrying every "
                                    "%g s", len(known), type(exc).__name__, exc, self.poll_s)
                    self._failing = True
                else:
                    if self._failing:
                        log.info("job watcher: reading jobs again")
                    self._failing = False
                    self.ticks += 1
                    self._fan_out(changed)
                if not self._subs:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
                except TimeoutError:
                    pass
        finally:
            # No await between the last look at `_subs` and here: a stream opened meanwhile
            # would have found this task still running and relied on it.
            self._task = None

    def _fan_out(self, changed: dict[str, Update | None]) -> None:
        for job_id, update in changed.items():
            subs = self._subs.get(job_id)
            if not subs:
                continue  # its last stream closed while the query ran
            if update is not None:
                self._last[job_id] = update.signature
            for sub in subs:
                sub.put(update)
