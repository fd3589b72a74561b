"""GET /v1/jobs/{id}/events: the job's progress as Server-Sent Events, until it finishes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import StreamingResponse

from api.deps import OwnerDep, RuntimeDep
from masterplan.db import queries as q
from masterplan.db.models import OPEN
from masterplan.runtime import Runtime

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_S = 0.25


def _snapshot(rt: Runtime, job_id: str) -> dict[str, Any]:
    with rt.sessions() as s:
        job = q.get_job(s, job_id=job_id)
        assert job is not None
        return {
            "id": job.id,
            "status": job.status,
            "stages": {r.stage: {"status": r.status, "provider": r.provider}
                       for r in q.stage_runs(s, job_id=job_id)},
            "error": job.error,
        }


def _progress(rt: Runtime, job_id: str) -> Iterator[str]:
    """One `progress` event per change (the database is polled; every worker writes there),
    then `done` with the final state."""
    last: dict[str, Any] | None = None
    while True:
        now = _snapshot(rt, job_id)
        if now["status"] not in OPEN:
            yield f"event: done\ndata: {json.dumps(now)}\n\n"
            return
        if now != last:
            yield f"event: progress\ndata: {json.dumps(now)}\n\n"
            last = now
        time.sleep(POLL_S)


@router.get("/{job_id}/events", response_class=StreamingResponse)
def events(job_id: str, owner: OwnerDep, rt: RuntimeDep) -> StreamingResponse:
    with rt.sessions() as s:
        if q.get_job(s, job_id=job_id, owner=owner) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} for this API key")
    return StreamingResponse(_progress(rt, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
