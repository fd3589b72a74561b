"""The job watcher on its own (SQLite, one event loop): one query per tick for every watched job,
changes fanned out to the streams of the job that changed, caps, and nothing left behind."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from api.job_state import Update, read_update
from api.watch import JobWatcher, StreamLimitReached
from masterplan.db import queries as q
from masterplan.db.models import RunStatus
from masterplan.db.session import make_engine, make_sessionmaker, upgrade

POLL_S = 0.02


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'watch.db'}")
    upgrade(e)
    yield e
    e.dispose()


def _jobs(engine: sa.Engine, n: int, owner: str = "alice") -> list[str]:
    with make_sessionmaker(engine).begin() as s:
        return [q.create_job(s, owner=owner, idea=f"idea {i}", context=None, deadline_s=900).id
                for i in range(n)]


def _first(engine: sa.Engine, job_id: str, owner: str = "alice") -> Update:
    update = read_update(engine, job_id, owner=owner)
    assert update is not None
    return update


class Queries:
    """The SELECTs the watcher sends, with the job ids each one asked for."""

    def __init__(self, engine: sa.Engine) -> None:
        self.seen: list[set[str]] = []
        sa.event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "stage_runs" in statement:
            self.seen.append({p for p in (params or ()) if isinstance(p, str)})


def _watcher(engine: sa.Engine, **kw: Any) -> JobWatcher:
    return JobWatcher(engine, poll_s=POLL_S, max_streams=kw.get("max_streams", 100),
                      max_per_key=kw.get("max_per_key", 100))


async def _until(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_one_query_per_tick_serves_every_stream_and_only_a_changed_job_is_sent(engine) -> None:
    ids = _jobs(engine, 3)
    firsts = {j: _first(engine, j) for j in ids}
    queries = Queries(engine)

    async def main() -> None:
        w = _watcher(engine)
        subs = {j: [w.subscribe(j, "alice", firsts[j]) for _ in range(2)] for j in ids}
        await _until(lambda: w.ticks >= 5)
        ticks, sent = w.ticks, len(queries.seen)
        assert ticks <= sent <= ticks + 1  # one query per tick (one may be in flight)
        assert all(seen == set(ids) for seen in queries.seen)
        assert all(s.queue.empty() for ss in subs.values() for s in ss)  # nothing changed

        with make_sessionmaker(engine).begin() as s:
            q.claim_stage(s, job_id=ids[1], stage="market", claim_id="c1", lease_s=30)
        got = [await asyncio.wait_for(s.queue.get(), 2) for s in subs[ids[1]]]
        assert got[0] is got[1]  # built and encoded once for every stream of the job
        assert got[0] is not None and got[0].snapshot["status"] == "running"
        assert got[0].snapshot["stages"]["market"] == {"status": "running", "provider": None}
        assert list(got[0].snapshot["stages"])[:2] == ["market", "technical"]  # pipeline order
        assert all(s.queue.empty() for j in (ids[0], ids[2]) for s in subs[j])
        for ss in subs.values():
            for s in ss:
                s.close()

    asyncio.run(main())


def test_a_job_nobody_watches_is_not_queried_and_the_task_ends_with_the_last_stream(engine) -> None:
    a, b = _jobs(engine, 2)
    queries = Queries(engine)

    async def main() -> None:
        w = _watcher(engine)
        on_a = [w.subscribe(a, "alice", _first(engine, a)) for _ in range(2)]
        on_b = w.subscribe(b, "bob", _first(engine, b))
        assert w.running and w.watched == {a, b}
        await _until(lambda: w.ticks >= 2)

        on_b.close()
        on_b.close()  # idempotent: the slot is given back once
        assert w.watched == {a} and w.stats()["open_in_process"] == 2
        n = len(queries.seen)
        await _until(lambda: len(queries.seen) >= n + 3)
        assert all(seen == {a} for seen in queries.seen[n + 1:])

        for s in on_a:
            s.close()
        await _until(lambda: not w.running, timeout=1.0)
        assert w.stats("alice") == {"open_in_process": 0, "max_in_process": 100, "max_per_key": 100,
                                    "watched_jobs": 0, "watcher_running": False,
                                    "open_for_this_key": 0}
        n = len(queries.seen)
        await asyncio.sleep(5 * POLL_S)
        assert len(queries.seen) == n

        again = w.subscribe(a, "alice", _first(engine, a))  # a new stream starts a new task
        assert w.running
        again.close()

    asyncio.run(main())


def test_streams_are_capped_per_key_and_per_process(engine) -> None:
    (job,) = _jobs(engine, 1)

    async def main() -> None:
        w = _watcher(engine, max_per_key=2, max_streams=3)
        first = _first(engine, job)
        alice = [w.subscribe(job, "alice", first) for _ in range(2)]
        with pytest.raises(StreamLimitReached, match="MAX_STREAMS_PER_KEY=2") as exc:
            w.subscribe(job, "alice", first)
        assert "close a stream" in exc.value.detail and exc.value.retry_after > 0
        bob = w.subscribe(job, "bob", first)
        with pytest.raises(StreamLimitReached, match="MAX_STREAMS=3"):
            w.subscribe(job, "carol", first)
        alice[0].close()
        alice.append(w.subscribe(job, "alice", first))
        for s in [*alice, bob]:
            s.close()
        assert w.stats()["open_in_process"] == 0

    asyncio.run(main())


def test_a_reader_that_falls_behind_keeps_the_newest_state(engine) -> None:
    (job,) = _jobs(engine, 1)

    async def main() -> None:
        w = _watcher(engine)
        sub = w.subscribe(job, "alice", _first(engine, job))
        sessions = make_sessionmaker(engine)
        stages = ["market", "technical", "finance", "risk", "growth"]
        for i, stage in enumerate(stages):  # ten changes, each seen by a tick
            with sessions.begin() as s:
                q.claim_stage(s, job_id=job, stage=stage, claim_id=f"c{i}", lease_s=30)
            await _until(lambda n=w.ticks: w.ticks > n + 1)
            with sessions.begin() as s:
                q.finish_stage(s, job_id=job, stage=stage, status=RunStatus.SUCCEEDED,
                               provider="stub")
            await _until(lambda n=w.ticks: w.ticks > n + 1)
        assert sub.queue.full()  # nobody read: the oldest states were dropped
        latest = None
        while not sub.queue.empty():
            latest = sub.queue.get_nowait()
        assert latest is not None
        assert {st: v["status"] for st, v in latest.snapshot["stages"].items() if st in stages} == {
            st: "succeeded" for st in stages}
        sub.close()

    asyncio.run(main())


def test_a_deleted_job_ends_its_streams_and_a_stale_first_read_is_corrected(engine) -> None:
    a, b = _jobs(engine, 2)

    async def main() -> None:
        w = _watcher(engine)
        stale = _first(engine, b)
        keep = w.subscribe(b, "alice", stale)
        with make_sessionmaker(engine).begin() as s:
            q.claim_stage(s, job_id=b, stage="market", claim_id="c1", lease_s=30)
        running = await asyncio.wait_for(keep.queue.get(), 2)
        assert running is not None and running.snapshot["status"] == "running"
        # A second stream whose own read predates the watcher's last one is sent the current
        # state on the next tick; the first stream is offered it again and skips it by id.
        late = w.subscribe(b, "alice", stale)
        current = await asyncio.wait_for(late.queue.get(), 2)
        assert current is not None and current.id == running.id

        gone = w.subscribe(a, "alice", _first(engine, a))
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM stage_runs WHERE job_id = :j"), {"j": a})
            c.execute(sa.text("DELETE FROM jobs WHERE id = :j"), {"j": a})
        assert await asyncio.wait_for(gone.queue.get(), 2) is None
        for s in (keep, late, gone):
            s.close()

    asyncio.run(main())


def test_the_watcher_outlives_a_database_outage(engine, caplog: pytest.LogCaptureFixture) -> None:
    (job,) = _jobs(engine, 1)

    def rename(a: str, b: str) -> None:
        with engine.begin() as c:
            c.execute(sa.text(f"ALTER TABLE {a} RENAME TO {b}"))

    async def main() -> None:
        w = _watcher(engine)
        sub = w.subscribe(job, "alice", _first(engine, job))
        await _until(lambda: w.ticks >= 1)
        rename("stage_runs", "stage_runs_away")
        await asyncio.sleep(10 * POLL_S)
        ticks = w.ticks
        await asyncio.sleep(5 * POLL_S)
        assert w.ticks == ticks and w.running  # failing, and still there
        rename("stage_runs_away", "stage_runs")
        with make_sessionmaker(engine).begin() as s:
            q.claim_stage(s, job_id=job, stage="market", claim_id="c1", lease_s=30)
        update = await asyncio.wait_for(sub.queue.get(), 2)
        assert update is not None and update.snapshot["status"] == "running"
        sub.close()

    with caplog.at_level("INFO", logger="api.watch"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "cannot read 1 jobs" in warnings[0].getMessage()
    assert any("reading jobs again" in r.getMessage() for r in caplog.records)
