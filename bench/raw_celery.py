"""The raw Celery baseline: the masterplan canvas shape with no-op tasks, the same configuration.

    chord(group(persona × 5), synthesize) | devils_advocate | finalize

Same `celery_config(settings)` as the real app (acks_late, prefetch 1, queues and routes,
events, time limits), Redis broker and result backend (database 9 unless BENCH_RAW_REDIS_URL
says otherwise). Each task returns the same small status dict as the real tasks.
Worker: `celery -A bench.raw_celery worker -P prefork -c 2`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from celery import Celery, chord, group

from bench.harness import RAW_DB, redis_url
from masterplan.personas import PERSONA_KEYS
from masterplan.settings import load_settings
from testkit.procs import ROOT


def _load_worker_config() -> Any:
    """`workers/config.py` on its own: importing the `workers` package would build the real
    app and connect its start-up hooks (runtime, database check) to this worker too."""
    spec = importlib.util.spec_from_file_location("_raw_worker_config",
                                                  ROOT / "workers" / "config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_config = _load_worker_config()
PERSONA_QUEUE: str = _config.PERSONA_QUEUE
celery_config = _config.celery_config
BROKER = os.environ.get("BENCH_RAW_REDIS_URL") or redis_url(RAW_DB)


def make_app(broker: str) -> Celery:
    settings = load_settings({"REDIS_URL": broker}, env_file=None)
    conf = celery_config(settings)
    conf["task_routes"] = {"raw.persona": {"queue": PERSONA_QUEUE}}
    # The baseline is the chord canvas, which needs its results (ours keeps them in SQL).
    conf["task_ignore_result"] = False
    app = Celery("raw")
    app.conf.update(conf)
    return app


app = make_app(BROKER)


@app.task(name="raw.persona")
def persona(*, job_id: str, persona: str) -> dict[str, str]:
    return {"stage": persona, "status": "succeeded"}


@app.task(name="raw.synthesize")
def synthesize(_results: Any = None, *, job_id: str) -> dict[str, str]:
    return {"stage": "synthesis", "status": "succeeded"}


@app.task(name="raw.devils_advocate")
def devils_advocate(_prev: Any = None, *, job_id: str) -> dict[str, str]:
    return {"stage": "critique", "status": "succeeded"}


@app.task(name="raw.finalize")
def finalize(_prev: Any = None, *, job_id: str) -> dict[str, str]:
    return {"stage": "finalize", "status": "succeeded"}


def canvas(job_id: str) -> Any:
    header = group(persona.si(job_id=job_id, persona=p) for p in PERSONA_KEYS)
    return (chord(header, synthesize.s(job_id=job_id)) | devils_advocate.s(job_id=job_id)
            | finalize.s(job_id=job_id))


def enqueue(job_id: str) -> Any:
    """Returns the AsyncResult of `finalize`: ready when the whole job is done."""
    return canvas(job_id).apply_async()
