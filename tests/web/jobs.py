"""Jobs written straight into the database, as the workers would have left them: their stages'
outputs (the stub's realistic answers), their ledger rows, their end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from masterplan.db import queries as q
from masterplan.db.models import JobStatus, RunStatus, utcnow
from masterplan.llm.stub import fake_output
from masterplan.personas import PERSONA_KEYS, critique_request, persona_request, synthesis_request

IDEA = "a marketplace for used lab equipment"


def outputs(idea: str = IDEA) -> dict[str, dict[str, Any]]:
    """Every stage's output, as the stub answers it."""
    found: dict[str, dict[str, Any]] = {}
    for key in PERSONA_KEYS:
        r = persona_request(key, idea, None)
        found[key] = fake_output("PersonaOutput", r.system, r.messages[0].content)
    r = synthesis_request(idea, None, dict(found))
    found["synthesis"] = fake_output("Masterplan", r.system, r.messages[0].content)
    r = critique_request(idea, found["synthesis"])
    found["critique"] = fake_output("Critique", r.system, r.messages[0].content)
    return found


def call(provider: str, outcome: str = "ok", *, started: float, latency_ms: int = 400,
         **extra: Any) -> dict[str, Any]:
    """One ledger row (a router `Attempt` as a dict); `started` in epoch seconds, 0: unknown."""
    row: dict[str, Any] = {
        "provider": provider, "model": f"{provider}-model", "outcome": outcome,
        "input_tokens": 1500 if outcome == "ok" else 0, "output_tokens": 400 if outcome == "ok" else 0,
        "cost_usd": 0.0012 if outcome == "ok" else 0.0, "latency_ms": latency_ms, "wait_ms": 0,
        "error_class": None, "error": None, "fallback_from": None, "cached_input_tokens": 0,
        "cache_write_tokens": 0, "started": started}
    row.update(extra)
    return row


@dataclass
class StoredJob:
    id: str
    idea: str
    calls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def store_job(rt: Any, *, owner: str, idea: str = IDEA,
              finished: dict[str, dict[str, Any] | None] | None = None,
              calls: dict[str, list[dict[str, Any]]] | None = None,
              status: JobStatus = JobStatus.SUCCEEDED, error: str | None = None) -> StoredJob:
    """A job whose stages in `finished` succeeded with those outputs (None: failed), with the
    ledger rows `calls` (by stage; by default one `ok` call on `anthropic` per finished stage),
    ended with `status`. Stages not in `finished` stay pending."""
    finished = outputs(idea) if finished is None else finished
    t0 = time.time() - 30
    if calls is None:
        calls = {stage: [call("anthropic", started=t0 + i)] for i, stage in enumerate(finished)}
    with rt.sessions.begin() as s:
        job = q.create_job(s, owner=owner, idea=idea, context=None, deadline_s=600)
        for stage, output in finished.items():
            rows = calls.get(stage, [])
            ok = next((r for r in reversed(rows) if r["outcome"] == "ok"), None)
            q.finish_stage(s, job_id=job.id, stage=stage,
                           status=RunStatus.SUCCEEDED if output is not None else RunStatus.FAILED,
                           output=output, provider=ok["provider"] if ok and output else None,
                           model=ok["model"] if ok and output else None,
                           latency_ms=ok["latency_ms"] if ok and output else None,
                           error=None if output is not None else "every provider failed")
        for stage, rows in calls.items():
            q.record_calls(s, job_id=job.id, stage=stage, attempts=rows)
        values: dict[str, Any] = {"status": status.value, "error": error}
        if status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            values["finished_at"] = utcnow()
        q.update_job(s, job_id=job.id, **values)
        return StoredJob(job.id, idea, calls)
