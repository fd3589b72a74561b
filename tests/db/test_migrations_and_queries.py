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
    assert {"jobs", "stage_runs", "llm_calls", "alembic_version"} <= tables
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
        assert q.claim_stage(s, job_id=job.id, stage="market", claim_id="a", lease_s=300).state == "claimed"
    with sessions.begin() as s:
        # A second delivery while the first is running does not get to call the LLM.
        assert q.claim_stage(s, job_id=job.id, stage="market", claim_id="b", lease_s=300).state == "busy"
    with sessions.begin() as s:
        assert q.finish_stage(s, job_id=job.id, stage="market", status=RunStatus.SUCCEEDED,
                              output={"summary": "first"}, provider="p1")
    with sessions.begin() as s:
        assert not q.finish_stage(s, job_id=job.id, stage="market", status=RunStatus.SUCCEEDED,
                                  output={"summary": "second"}, provider="p2")
        assert q.claim_stage(s, job_id=job.id, stage="market", claim_id="c",
                             lease_s=300).state == "finished"

    with sessions() as s:
        runs = [r for r in q.stage_runs(s, job_id=job.id) if r.stage == "market"]
        assert len(runs) == 1
        assert runs[0].output == {"summary": "first"} and runs[0].provider == "p1"
        assert q.get_job(s, job_id=job.id).status == "running"
    engine.dispose()


def test_a_claim_whose_lease_ran_out_is_taken_over_and_its_call_written_as_lost(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job = q.create_job(s, owner="o", idea="idea", context=None, deadline_s=60)
        assert q.claim_stage(s, job_id=job.id, stage="risk", claim_id="a", lease_s=0.001).state == "claimed"
    with sessions.begin() as s:
        # Its worker died: nobody renewed the lease, so the claim can be taken over.
        claim = q.claim_stage(s, job_id=job.id, stage="risk", claim_id="b", lease_s=300)
        assert claim.state == "claimed" and claim.took_over
        # and the old holder can no longer hand it back
        q.release_stage(s, job_id=job.id, stage="risk", claim_id="a")
    with sessions() as s:
        run = next(r for r in q.stage_runs(s, job_id=job.id) if r.stage == "risk")
        assert run.attempts == 2 and run.status == "running" and run.claim_id == "b"
        assert [(c.stage, c.outcome) for c in q.llm_calls(s, job_id=job.id)] == [("risk", "lost")]
    engine.dispose()


def test_no_stage_is_claimed_for_a_cancelled_job(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        job = q.create_job(s, owner="o", idea="idea", context=None, deadline_s=60)
        q.update_job(s, job_id=job.id, status="cancelled")
    with sessions.begin() as s:
        assert q.claim_stage(s, job_id=job.id, stage="growth", claim_id="a", lease_s=30).state == "closed"
    engine.dispose()


def test_0003_moves_persona_runs_and_the_jobs_outputs_into_stage_runs(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    upgrade(engine, "0002")
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO jobs (id, owner, idea, status, created_at, deadline_at, synthesis, "
            "synthesis_provider, critique, critique_provider, finished_at) VALUES ('j1', 'o', 'i', "
            "'succeeded', :t, :t, :plan, 'google', :crit, 'groq', :t), ('j2', 'o', 'i', 'running', "
            ":t, :t, NULL, NULL, NULL, NULL, NULL)"),
            {"t": "2026-11-30 10:00:00+00:00", "plan": '{"executive_summary": "x"}',
             "crit": '{"verdict": "go"}'})
        for job, status in (("j1", "succeeded"), ("j2", "running")):
            c.execute(sa.text(
                "INSERT INTO persona_runs (job_id, persona, status, provider, attempts, output) "
                "VALUES (:j, 'market', :s, 'google', 1, :o)"),
                {"j": job, "s": status, "o": '{"summary": "m"}' if status == "succeeded" else None})

    upgrade(engine)

    sessions = make_sessionmaker(engine)
    with sessions() as s:
        done = {r.stage: r for r in q.stage_runs(s, job_id="j1")}
        assert set(done) == {"market", "synthesis", "critique"}
        assert done["market"].output == {"summary": "m"} and done["market"].provider == "google"
        assert done["synthesis"].status == "succeeded" and done["synthesis"].provider == "google"
        assert done["synthesis"].output == {"executive_summary": "x"}
        assert done["critique"].output == {"verdict": "go"} and done["critique"].provider == "groq"
        running = {r.stage: r.status for r in q.stage_runs(s, job_id="j2")}
        assert running == {"market": "running", "synthesis": "pending", "critique": "pending"}
    assert "persona_runs" not in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_0006_adds_the_cache_token_columns_zero_for_the_calls_before(any_db_url: str) -> None:
    engine = make_engine(any_db_url)
    upgrade(engine, "0005")
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO jobs (id, owner, idea, status, created_at, deadline_at, redrives, lane, "
            "held_usd) VALUES ('j1', 'o', 'i', 'succeeded', :t, :t, 0, 'first', 0)"),
            {"t": "2026-11-30 10:00:00+00:00"})
        c.execute(sa.text(
            "INSERT INTO llm_calls (job_id, stage, provider, model, input_tokens, output_tokens, "
            "cost_usd, latency_ms, wait_ms, outcome, created_at) VALUES ('j1', 'market', 'groq', "
            "'m', 100, 10, 0.001, 5, 0, 'ok', :t)"), {"t": "2026-11-30 10:00:00+00:00"})

    upgrade(engine)

    with make_sessionmaker(engine)() as s:
        q.record_calls(s, job_id="j1", stage="synthesis", attempts=[dict(
            provider="anthropic", model="m", outcome="ok", input_tokens=3000, output_tokens=50,
            cached_input_tokens=2048, cache_write_tokens=0, cost_usd=0.002, latency_ms=5,
            wait_ms=0)])
        s.commit()
        (before,), (after,) = (q.usage_by_stage(s, job_id="j1")[i:i + 1] for i in (0, 1))
        assert (before["stage"], before["cached_input_tokens"], before["cache_write_tokens"]) == (
            "market", 0, 0)
        assert (after["stage"], after["input_tokens"], after["cached_input_tokens"]) == (
            "synthesis", 3000, 2048)
    from alembic import command

    from masterplan.db.session import _alembic_config

    cfg = _alembic_config(any_db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")
    assert "cached_input_tokens" not in {
        col["name"] for col in sa.inspect(engine).get_columns("llm_calls")}
    engine.dispose()
