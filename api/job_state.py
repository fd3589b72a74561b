"""What an event stream shows of a job, and reading it for many jobs at once.

A job's state is its status, its error and each stage's (status, provider). The watcher asks,
once per tick, which of the jobs it watches changed since the state it last saw: on PostgreSQL
the server itself compares (the API sends each job's last signature, an md5 of the state, and
gets back only the jobs that differ), so a tick in which nothing changed costs the API process
almost nothing however many jobs are watched. Elsewhere (the embedded SQLite) every watched
job's rows are read and compared here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from masterplan.db.models import OPEN, Job, StageRun
from masterplan.stages import pipeline

# Ids per query on SQLite (PostgreSQL takes them as one array): far below its 32,766 bound
# variables; at the default MAX_STREAMS every watched job fits in one query.
_CHUNK = 5000

_JOBS, _RUNS = cast(sa.Table, Job.__table__), cast(sa.Table, StageRun.__table__)
_J, _R = _JOBS.c, _RUNS.c

# state: [status, error, [[stage, status, provider], ...] by stage name] as JSON text.
_PG_CHANGES = sa.text("""
SELECT k.id, x.state, md5(x.state)
FROM json_each_text(CAST(:known AS json)) AS k(id, sig)
LEFT JOIN LATERAL (
    SELECT json_build_array(j.status, j.error, (
        SELECT json_agg(json_build_array(r.stage, r.status, r.provider) ORDER BY r.stage)
        FROM stage_runs r WHERE r.job_id = j.id))::text AS state
    FROM jobs j
    WHERE j.id = k.id AND (CAST(:owner AS varchar) IS NULL OR j.owner = CAST(:owner AS varchar))
) x ON true
WHERE md5(x.state) IS DISTINCT FROM k.sig
""")


@dataclass(frozen=True)
class Update:
    """A job's state as a stream sends it: the snapshot, its JSON and its SSE id."""

    signature: str
    snapshot: dict[str, Any]
    data: str
    id: str

    @property
    def open(self) -> bool:
        return self.snapshot["status"] in OPEN

    @classmethod
    def of(cls, job_id: str, signature: str, state: str) -> Update:
        status, error, runs = json.loads(state)
        order = pipeline().order
        runs = sorted(runs or (), key=lambda r: order.get(r[0], len(order)))
        snapshot = {
            "id": job_id,
            "status": status,
            "stages": {st: {"status": s, "provider": p} for st, s, p in runs},
            "error": error,
        }
        data = json.dumps(snapshot)
        # The id is the content's hash, not a counter: a client that reconnects to another API
        # process (or after a restart) is still recognised as having seen this state.
        return cls(signature, snapshot, data,
                   hashlib.blake2b(data.encode(), digest_size=8).hexdigest())


def read_changes(engine: Engine, known: Mapping[str, str | None], *, owner: str | None = None
                 ) -> dict[str, Update | None]:
    """The jobs of `known` (job id -> signature last seen, or None) whose state differs, in one
    query: an Update for each, None for a job that no longer exists. With `owner`, another
    owner's job counts as not existing."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # One JSON text, not two arrays: the driver quotes an array element by element.
            rows = conn.execute(_PG_CHANGES, {"known": json.dumps(known), "owner": owner}).all()
            return {job_id: None if state is None else Update.of(job_id, sig, state)
                    for job_id, state, sig in rows}
        return _compare(conn, known, owner)


def _compare(conn: Connection, known: Mapping[str, str | None], owner: str | None
             ) -> dict[str, Update | None]:
    ids = list(known)
    found: dict[str, tuple[str, str | None, list[list[str | None]]]] = {}
    for i in range(0, len(ids), _CHUNK):
        stmt = (sa.select(_J.id, _J.status, _J.error, _R.stage, _R.status, _R.provider)
                .select_from(sa.outerjoin(_JOBS, _RUNS, _R.job_id == _J.id))
                .where(_J.id.in_(ids[i:i + _CHUNK]))
                .order_by(_J.id, _R.stage))
        if owner is not None:
            stmt = stmt.where(_J.owner == owner)
        for job_id, status, error, stage, run_status, provider in conn.execute(stmt).all():
            runs = found.setdefault(job_id, (status, error, []))[2]
            if stage is not None:
                runs.append([stage, run_status, provider])
    out: dict[str, Update | None] = {}
    for job_id, last in known.items():
        if job_id not in found:
            if last is not None:
                out[job_id] = None
            continue
        status, error, runs = found[job_id]
        state = json.dumps([status, error, runs or None])
        if state != last:  # the state is its own signature here: no hashing per job per tick
            out[job_id] = Update.of(job_id, state, state)
    return out


def read_update(engine: Engine, job_id: str, *, owner: str) -> Update | None:
    """The job's current state, or None when it does not exist for this owner."""
    return read_changes(engine, {job_id: None}, owner=owner).get(job_id)
