"""Reading the state of many jobs at once, on SQLite and PostgreSQL alike: only the jobs that
changed since the signature given come back, a deleted job as None, another owner's as absent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from api.job_state import read_changes, read_update
from masterplan.db import queries as q
from masterplan.db.models import RunStatus
from masterplan.db.session import make_engine, make_sessionmaker, upgrade


@pytest.fixture
def engine(any_db_url: str) -> Iterator[sa.Engine]:
    e = make_engine(any_db_url)
    upgrade(e)
    yield e
    e.dispose()


def test_only_what_changed_comes_back(engine: sa.Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        a, b, c = (q.create_job(s, owner="alice", idea=f"idea {i}", context=None, deadline_s=900).id
                   for i in range(3))
        other = q.create_job(s, owner="bob", idea="bob's", context=None, deadline_s=900).id

    first = read_changes(engine, {a: None, b: None, c: None})
    assert set(first) == {a, b, c}
    snap = first[a].snapshot  # type: ignore[union-attr]
    assert snap == {"id": a, "status": "queued", "error": None, "stages": {
        st: {"status": "pending", "provider": None}
        for st in ("market", "technical", "finance", "risk", "growth", "synthesis", "critique")}}
    assert list(snap["stages"]) == ["market", "technical", "finance", "risk", "growth",
                                    "synthesis", "critique"]
    seen = {j: u.signature for j, u in first.items() if u is not None}
    assert read_changes(engine, seen) == {}

    with sessions.begin() as s:
        q.claim_stage(s, job_id=b, stage="growth", claim_id="c1", lease_s=30)
    with sessions.begin() as s:
        q.finish_stage(s, job_id=b, stage="growth", status=RunStatus.SUCCEEDED, provider="groq")
        q.update_job(s, job_id=b, status="failed", error="boom")
    changed = read_changes(engine, seen)
    assert set(changed) == {b}
    update = changed[b]
    assert update is not None and not update.open
    assert (update.snapshot["status"], update.snapshot["error"]) == ("failed", "boom")
    assert update.snapshot["stages"]["growth"] == {"status": "succeeded", "provider": "groq"}
    assert update.id != first[b].id  # type: ignore[union-attr]
    assert read_update(engine, b, owner="alice") == update  # the same signature, data and id

    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM stage_runs WHERE job_id = :j"), {"j": c})
        conn.execute(sa.text("DELETE FROM jobs WHERE id = :j"), {"j": c})
    assert read_changes(engine, seen | {b: update.signature}) == {c: None}

    assert read_update(engine, other, owner="alice") is None
    assert read_update(engine, "no-such-job", owner="alice") is None
    assert read_update(engine, other, owner="bob") is not None
