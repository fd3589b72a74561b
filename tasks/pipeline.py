"""The masterplan canvas:

    chord(group(persona × 5), synthesize) | devils_advocate | finalize

Tasks pass the job id, never LLM text. A step that must wait is retried with
`countdown = wait + jitter` (never `sleep()` in a worker); rate-limit waits do not use up the
error budget, which travels in the `errors` keyword.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import Task, chord, group
from celery.exceptions import Retry
from celery.result import AsyncResult

from masterplan import pipeline
from masterplan.personas import PERSONA_KEYS
from workers import app
from workers.runtime import get_runtime

log = logging.getLogger(__name__)
ERROR_BUDGET = 2


def countdown(wait_ms: int) -> float:
    """The wait plus a small random jitter, so waiting tasks do not all wake together."""
    return wait_ms / 1000 + random.uniform(0.02, 0.05 + min(wait_ms, 10_000) / 20_000)


class PipelineTask(Task):
    """A step that dies unexpectedly ends its job `failed`, its partial results kept."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        job_id = kwargs.get("job_id") or (args[-1] if args else None)
        if job_id:
            pipeline.fail_job(get_runtime(), job_id, f"{self.name} crashed: {type(exc).__name__}: {exc}")


def _step(task: Task, fn: Any, job_id: str, errors: int, **kw: Any) -> dict[str, str]:
    try:
        return fn(get_runtime(), job_id, errors_left=ERROR_BUDGET - errors, **kw).as_dict()
    except pipeline.Deferred as d:
        log.info("%s for job %s waits %d ms: %s", task.name, job_id, d.wait_ms, d.reason)
        raise task.retry(countdown=countdown(d.wait_ms), max_retries=None,
                         kwargs={**kw, "job_id": job_id, "errors": errors + int(d.is_error)}) from d


@app.task(bind=True, name="masterplan.persona", max_retries=None)
def persona(self: Task, *, job_id: str, persona: str, errors: int = 0) -> dict[str, str]:
    """Never raises for LLM trouble: failures are recorded so the chord reaches synthesis."""
    try:
        return _step(self, pipeline.run_persona, job_id, errors, persona=persona)
    except Retry:
        raise
    except Exception as exc:
        log.exception("persona %s of job %s crashed", persona, job_id)
        return pipeline.record_persona_crash(get_runtime(), job_id, persona, exc).as_dict()


@app.task(bind=True, base=PipelineTask, name="masterplan.synthesize", max_retries=None)
def synthesize(self: Task, _results: Any = None, *, job_id: str, errors: int = 0) -> dict[str, str]:
    return _step(self, pipeline.synthesize, job_id, errors)


@app.task(bind=True, base=PipelineTask, name="masterplan.devils_advocate", max_retries=None)
def devils_advocate(self: Task, _prev: Any = None, *, job_id: str, errors: int = 0) -> dict[str, str]:
    return _step(self, pipeline.critique, job_id, errors)


@app.task(bind=True, base=PipelineTask, name="masterplan.finalize")
def finalize(self: Task, _prev: Any = None, *, job_id: str) -> dict[str, str]:
    return pipeline.finalize(get_runtime(), job_id).as_dict()


def masterplan_canvas(job_id: str) -> Any:
    header = group(persona.si(job_id=job_id, persona=p) for p in PERSONA_KEYS)
    body = synthesize.s(job_id=job_id)
    return chord(header, body) | devils_advocate.s(job_id=job_id) | finalize.s(job_id=job_id)


def enqueue(job_id: str) -> AsyncResult:
    return masterplan_canvas(job_id).apply_async()
