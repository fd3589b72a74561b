"""One relay per API process: every open interview-turn stream is fed from it.

A worker writes a turn's events to a Redis Stream (masterplan/turnstream.py). Here one thread
reads every watched stream with a single blocking XREAD (at most `BLOCK_MS` long, so a stream
opened meanwhile joins within that) and hands what arrived to each reader's asyncio queue on the
event loop. So an open stream costs a queue, not a thread or a Redis connection, and the event
loop never waits on Redis. The thread runs while some stream is open.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from masterplan import turnstream as ts

log = logging.getLogger(__name__)
BLOCK_MS = 20
# After a Redis error the relay looks again after this long (readers wait; heartbeats go on).
ERROR_PAUSE_S = 0.5


def position(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class Reader:
    """One open stream: the events after `after`, put on `queue` in batches."""

    key: str
    owner: str
    after: str
    relay: TurnRelay
    queue: asyncio.Queue[list[ts.Event]] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.relay.release(self)


class StreamsFull(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TurnRelay:
    def __init__(self, redis: Any, *, max_streams: int, max_per_key: int) -> None:
        self.redis = redis
        self.max_streams, self.max_per_key = max_streams, max_per_key
        self._readers: dict[str, set[Reader]] = {}
        self._per_key: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def open_streams(self) -> int:
        return sum(self._per_key.values())

    def check_room(self, owner: str) -> None:
        """Raises StreamsFull when a new stream for `owner` would pass a cap (asked before
        anything is stored for it)."""
        if self.open_streams >= self.max_streams:
            raise StreamsFull(f"this API process has {self.max_streams} event streams open "
                              "(MAX_STREAMS); retry shortly")
        if self._per_key[owner] >= self.max_per_key:
            raise StreamsFull(f"this API key has {self.max_per_key} event streams open here "
                              "(MAX_STREAMS_PER_KEY); close one first")

    def open(self, key: str, owner: str, after: str = ts.START) -> Reader:
        """A reader of the events of `key` after `after` (on the event loop)."""
        self.check_room(owner)
        reader = Reader(key, owner, after, self)
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._readers.setdefault(key, set()).add(reader)
            self._per_key[owner] += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="turn-relay", daemon=True)
                self._thread.start()
        return reader

    def release(self, reader: Reader) -> None:
        with self._lock:
            readers = self._readers.get(reader.key)
            if readers is not None:
                readers.discard(reader)
                if not readers:
                    del self._readers[reader.key]
            self._per_key[reader.owner] -= 1
            if self._per_key[reader.owner] <= 0:
                del self._per_key[reader.owner]

    def _watch(self) -> dict[str, str]:
        """Each watched stream from its least advanced reader; empty: stop."""
        with self._lock:
            if not self._readers:
                self._thread = None
                return {}
            return {key: min((r.after for r in readers), key=position)
                    for key, readers in self._readers.items()}

    def _run(self) -> None:
        while streams := self._watch():
            try:
                got = self.redis.xread(streams, block=BLOCK_MS, count=500)
                for raw_key, entries in got or []:
                    key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                    self._deliver(key, ts.decode(entries))
            except Exception as exc:  # noqa: BLE001 - Redis away: readers keep waiting
                log.warning("turn relay: reading the event streams failed: %s", exc)
                time.sleep(ERROR_PAUSE_S)

    def _deliver(self, key: str, events: list[ts.Event]) -> None:
        with self._lock:
            readers = list(self._readers.get(key, ()))
            loop = self._loop
        for reader in readers:
            fresh = [e for e in events if position(e.id) > position(reader.after)]
            if fresh and loop is not None:
                reader.after = fresh[-1].id
                try:
                    loop.call_soon_threadsafe(reader.queue.put_nowait, fresh)
                except RuntimeError:  # the loop has closed (the app is shutting down)
                    reader.closed = True
