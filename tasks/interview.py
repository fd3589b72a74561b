"""An interview turn's task, on the `interactive` queue: run the turn (masterplan/conversation.py),
whose events the API relays as they are written. A turn that must wait for providers is retried
with a countdown, like a stage (never `sleep()` in a worker)."""

from __future__ import annotations

import logging

from celery import Task

from masterplan import conversation
from masterplan.stages import INTERACTIVE_QUEUE
from tasks.pipeline import countdown, fail_fast_connection
from workers import app
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(bind=True, name="masterplan.interview_turn", max_retries=None, ignore_result=True)
def interview_turn(self: Task, *, interview_id: str, n: int) -> str:
    try:
        return conversation.run_turn(get_runtime(), interview_id, n)
    except conversation.Wait as w:
        log.info("interview %s turn %d waits %d ms", interview_id, n, w.wait_ms)
        raise self.retry(countdown=countdown(w.wait_ms), max_retries=None) from w


def enqueue_turn(interview_id: str, n: int) -> None:
    """Publish a turn; raises when the broker cannot take it (the caller says so: a founder is
    waiting, there is no sweep to publish it later)."""
    with fail_fast_connection() as conn:
        interview_turn.apply_async(kwargs={"interview_id": interview_id, "n": n},
                                   queue=INTERACTIVE_QUEUE, connection=conn, retry=False)
