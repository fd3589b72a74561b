"""The masterplan's one task: run a stage of a job, then publish what that made ready.

    POST /v1/jobs -> publish(personas)  ->  each persona's task, on storing its result, publishes
    the synthesis if it was the last one the synthesis needed  ->  synthesis -> critique

There is no chord: which stage may run is decided in SQL when a stage is stored (the stage rows
are locked, so exactly one finisher sees its successor become ready), and the recovery sweep
re-publishes whatever a lost message, worker or Redis left behind. Tasks pass ids, never LLM
text — except a result kept for a retry because the database was away when it arrived.

A step that must wait is retried with `countdown = wait + jitter` (never `sleep()` in a worker);
rate-limit waits do not use up the error budget, which travels in the `errors` keyword.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task

from masterplan import pipeline
from masterplan.db.session import is_db_unavailable
from masterplan.stages import pipeline as stages
from workers import app
from workers.config import FAIL_FAST_TRANSPORT
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
ERROR_BUDGET = 2
# Retries while the database is unreachable: 1, 2, 4 ... 30 s apart, about 20 minutes in all;
# after that the task gives up and the sweep re-drives the job once the database is back.
DB_RETRIES = 45


def countdown(wait_ms: int) -> float:
    """The wait plus a small random jitter, so waiting tasks do not all wake together."""
    return wait_ms / 1000 + random.uniform(0.02, 0.05 + min(wait_ms, 10_000) / 20_000)


def _db_backoff(n: int) -> float:
    return min(30.0, 2.0**n) * random.uniform(0.8, 1.2)


def _db_retry(task: Task, kw: dict[str, Any], pending: dict[str, Any] | None, n: int,
              exc: BaseException) -> BaseException:
    if n >= DB_RETRIES:
        return exc  # the sweep re-drives the job once the database is back
    return task.retry(countdown=_db_backoff(n), max_retries=None,
                      kwargs={**kw, "pending": pending, "db_retries": n + 1})


@app.task(bind=True, name="masterplan.stage", max_retries=None, ignore_result=True)
def stage(self: Task, *, job_id: str, stage: str, errors: int = 0, waiting: bool = False,
          pending: dict[str, Any] | None = None, db_retries: int = 0) -> dict[str, Any]:
    """Never raises for LLM trouble: a failure is the stage's result, stored like a success."""
    rt = get_runtime()
    kw = {"job_id": job_id, "stage": stage, "errors": errors, "db_retries": 0}
    try:
        if pending is not None:
            result = pipeline.store_pending(rt, job_id, stage, pending)
        else:
            result = pipeline.run_stage(rt, job_id, stage, errors_left=ERROR_BUDGET - errors,
                                        waiting=waiting)
    except pipeline.Deferred as d:
        log.info("stage %s of job %s waits %d ms: %s", stage, job_id, d.wait_ms, d.reason)
        raise self.retry(countdown=countdown(d.wait_ms), max_retries=None,
                         kwargs={**kw, "errors": errors + int(d.is_error),
                                 "waiting": not d.is_error}) from d
    except pipeline.StoreLater as keep:
        log.warning("stage %s of job %s: %s", stage, job_id, keep)
        raise _db_retry(self, kw, keep.outcome, db_retries, keep) from keep
    except Exception as exc:
        if is_db_unavailable(exc):
            log.warning("stage %s of job %s: database unreachable, retrying: %s", stage, job_id, exc)
            raise _db_retry(self, kw, pending, db_retries, exc) from exc
        log.exception("stage %s of job %s crashed", stage, job_id)
        result = pipeline.record_crash(rt, job_id, stage, exc)
    for jid, names in ((job_id, result.ready), *((j, first_stages()) for j in result.released)):
        try:
            publish(jid, names)
        except Exception as exc:  # noqa: BLE001 - stored; the sweep publishes what this could not
            log.warning("job %s: could not publish %s (%s); the recovery sweep will", jid,
                        ", ".join(names), exc)
    return result.as_dict()


def publish(job_id: str, names: Iterable[str], **options: Any) -> None:
    """Send a task for each stage, to its queue. Raises when the broker cannot take one."""
    p = stages()
    for name in names:
        stage.apply_async(kwargs={"job_id": job_id, "stage": name}, queue=p[name].queue, **options)


_fail_fast_pool: Any = None
_pool_lock = threading.Lock()


@contextmanager
def fail_fast_connection() -> Iterator[Any]:
    """A broker connection that gives up within about a second when the broker is away (for
    callers that answer a client: the API, the sweep). From a pool of its own, kept open."""
    global _fail_fast_pool
    if _fail_fast_pool is None:
        with _pool_lock:
            if _fail_fast_pool is None:
                _fail_fast_pool = app.connection_for_write(
                    transport_options=FAIL_FAST_TRANSPORT).Pool(limit=app.conf.broker_pool_limit)
    with _fail_fast_pool.acquire(block=True, timeout=5) as conn:
        yield conn


def publish_or_fail_fast(job_id: str, names: Iterable[str]) -> None:
    """`publish` on a fail-fast connection (for callers that keep the rows and try again later)."""
    with fail_fast_connection() as conn:
        publish(job_id, names, connection=conn, retry=False)


def first_stages() -> list[str]:
    """The stages that need nothing: what a job's admission publishes."""
    return [s.name for s in stages().stages if not s.needs]


def enqueue(job_id: str) -> None:
    """Publish an admitted job's first stages. The job row is the outbox: if the broker is
    away, the sweep publishes them later."""
    publish_or_fail_fast(job_id, first_stages())
