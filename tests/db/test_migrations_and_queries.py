"""Migrations from empty and the idempotent writes, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from masterplan.db import queries as q
from masterplan.db.models import RunStatus
from masterplan.db.session import (
    check_schema,
    head_revision,
    make_engine,
    make_sessionmaker,
    upgrade,
)
from masterplan.errors import SchemaBehindError


def test_an_empty_database_is_refused_then_migrated(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    with pytest.raises(SchemaBehindError, match="alembic upgrade head"):
        check_schema(engine)

    upgrade(engine)

    check_schema(engine)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"jobs", "persona_runs", "llm_calls", "alembic_version"} <= tables
    with engine.connect() as c:
        assert c.scalar(sa.text("SELECT version_num FROM alembic_version")) == head_revision()
    engine.dispose()


def test_first_finished_write_wins_and_claims_are_exclusive(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job = q.create_job(s, owner="o", idea="idea", context={"k": 1}, deadline_s=60)

    with sessions.begin() as s:
        assert q.claim_persona(s, job_id=job.id, persona="market", lease_s=300) == "claimed"
    with sessions.begin() as s:
        # A second delivery while the first is running does not get to call the LLM.
        assert q.claim_persona(s, job_id=job.id, persona="market", lease_s=300) == "busy"
    with sessions.begin() as s:
        assert q.finish_persona(s, job_id=job.id, persona="market", status=RunStatus.SUCCEEDED,
                                output={"summary": "first"}, provider="p1")
    with sessions.begin() as s:
        assert not q.finish_persona(s, job_id=job.id, persona="market", status=RunStatus.SUCCEEDED,
                                    output={"summary": "second"}, provider="p2")
        assert q.claim_persona(s, job_id=job.id, persona="market", lease_s=300) == "finished"

    with sessions() as s:
        runs = [r for r in q.persona_runs(s, job_id=job.id) if r.persona == "market"]
        assert len(runs) == 1
        assert runs[0].output == {"summary": "first"} and runs[0].provider == "p1"
        assert q.get_job(s, job_id=job.id).status == "running"
    engine.dispose()


def test_a_stale_claim_is_taken_over(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job = q.create_job(s, owner="o", idea="idea", context=None, deadline_s=60)
        assert q.claim_persona(s, job_id=job.id, persona="risk", lease_s=300) == "claimed"
    with sessions.begin() as s:
        # Its worker died: after the lease, the claim can be taken over.
        assert q.claim_persona(s, job_id=job.id, persona="risk", lease_s=0) == "claimed"
    with sessions() as s:
        run = next(r for r in q.persona_runs(s, job_id=job.id) if r.persona == "risk")
        assert run.attempts == 2
    engine.dispose()
