"""A real Celery worker running inside this process (threads pool), for the embedded default.

Same tasks, same canvas, same acks and retries as a separate worker; only the broker is in memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery.result import _set_task_join_will_block
from celery.worker import WorkController


class _Worker(WorkController):
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.ready = threading.Event()
        super().__init__(*args, **kwargs)

    def on_consumer_ready(self, consumer: object) -> None:
        self.ready.set()


@contextmanager
def embedded_worker(
    app: Celery, *, concurrency: int = 8, loglevel: str = "WARNING", hostname: str | None = None,
    sweep: bool = True,
) -> Iterator[WorkController]:
    """Start a worker thread, wait until it consumes, stop it on exit; with `sweep`, the
    recovery sweep runs beside it as in a worker process."""
    from celery.utils.nodenames import anon_nodename

    from workers.celery_app import start_sweeper

    app.finalize()
    app.set_current()
    app.set_default()
    worker = _Worker(
        app=app, concurrency=concurrency, pool="threads", loglevel=loglevel,
        hostname=hostname or anon_nodename(), without_heartbeat=True, without_mingle=True,
        without_gossip=True, ready_callback=None,
    )
    thread = threading.Thread(target=worker.start, name="embedded-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(30):
        raise RuntimeError("the embedded worker did not start within 30 s")
    # The worker marks the whole process as "inside a task"; the caller's thread is not.
    _set_task_join_will_block(False)
    sweeper = start_sweeper() if sweep else None
    try:
        yield worker
    finally:
        if sweeper is not None:
            sweeper.stop()
        worker.stop(in_sighandler=False)
        thread.join(10)
