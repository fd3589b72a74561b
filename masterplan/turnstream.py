"""An interview turn's events in a Redis Stream: written by the worker running the turn, read by
the API (relayed as Server-Sent Events) and by the terminal.

Events, in order: `token` ({"text"}) as the interviewer writes; `wait` ({"wait_ms", "reason"})
when every provider must be waited for before the first token; then either `turn` (the
structured part, see masterplan/conversation.py) or `error` ({"error", "partial"}), and last
`end`. An event's id is its Redis Stream entry id, so a reader that reconnects with the last id it
saw resumes right after it. The stream expires INTERVIEW_STREAM_TTL_S after its last event.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

TOKEN, WAIT, TURN, ERROR, END = "token", "wait", "turn", "error", "end"
START = "0-0"


def key(prefix: str, interview_id: str, n: int) -> str:
    return f"{prefix}:turn:{{{interview_id}}}:{n}"


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    name: str
    data: str  # JSON

    def frame(self) -> bytes:
        return f"id: {self.id}\nevent: {self.name}\ndata: {self.data}\n\n".encode()

    def payload(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.data)
        return loaded


def decode(entries: list[Any]) -> list[Event]:
    """XREAD/XRANGE entries as events."""
    out = []
    for entry_id, fields in entries:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        name = fields.get(b"event", fields.get("event", b""))
        data = fields.get(b"data", fields.get("data", b"{}"))
        out.append(Event(eid, name.decode() if isinstance(name, bytes) else name,
                         data.decode() if isinstance(data, bytes) else data))
    return out


class TurnWriter:
    """The worker's side: each event one XADD, with the stream's expiry in the same round trip."""

    def __init__(self, redis: Any, stream_key: str, ttl_s: int) -> None:
        self.redis, self.key, self.ttl_s = redis, stream_key, ttl_s

    def emit(self, name: str, data: dict[str, Any]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.key, {"event": name, "data": json.dumps(data, separators=(",", ":"))})
        pipe.expire(self.key, self.ttl_s)
        pipe.execute()

    def reset(self) -> None:
        """A turn run again from its start (a redelivered task) begins a fresh stream."""
        self.redis.delete(self.key)


def follow(redis: Any, stream_key: str, *, after: str = START, block_ms: int = 1000,
           give_up_s: float = 600.0) -> Iterator[Event]:
    """Read a turn's events as they come, until `end` (a blocking reader: the terminal's)."""
    import time

    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        got = redis.xread({stream_key: after}, block=block_ms, count=100)
        for _, entries in got or []:
            for event in decode(entries):
                after = event.id
                yield event
                if event.name == END:
                    return
