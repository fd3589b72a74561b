"""Event streams on a real `uvicorn api.main:app` process (PostgreSQL, Redis db 4, no worker: jobs
stay queued unless the test writes their rows): many open streams do not starve the API, a job
that finishes ends its streams, closed streams are freed, and the caps answer 429."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.procs import BIN, Proc, clean_env, free_port, wait_http
from tests.conftest import RUN_PREFIX, _redis_url, fresh_pg_database

KEY_A, KEY_B = "events-key-a-0123456789", "events-key-b-0123456789"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}
PROMPT = 5.0  # "not frozen": the bench measures the real ratios


@dataclass
class Api:
    base: str
    db_url: str
    proc: Proc


@pytest.fixture(scope="module")
def pg_events(redis_url: str) -> Iterator[str]:
    from masterplan.db.session import make_engine, upgrade

    with fresh_pg_database("mp_events") as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


@contextmanager
def _api(db_url: str, log: Path, **env: str) -> Iterator[Api]:
    port = free_port()
    proc = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port), "--log-level", "warning"],
                clean_env(REDIS_URL=_redis_url(4), REDIS_KEY_PREFIX=f"{RUN_PREFIX}-events",
                          DATABASE_URL=db_url, API_KEYS=f"{KEY_A},{KEY_B}", **env), log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=60, proc=proc)
        yield Api(base, db_url, proc)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def big_api(pg_events: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Caps raised for the many-streams test."""
    with _api(pg_events, tmp_path_factory.mktemp("api") / "big.log", MAX_STREAMS_PER_KEY="300",
              MAX_STREAMS="400") as api:
        yield api


@pytest.fixture(scope="module")
def small_api(pg_events: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Tiny caps and a fast heartbeat."""
    with _api(pg_events, tmp_path_factory.mktemp("api") / "small.log", MAX_STREAMS_PER_KEY="3",
              MAX_STREAMS="5", STREAM_HEARTBEAT_S="0.5") as api:
        yield api


# -- helpers -----------------------------------------------------------------------------
@dataclass
class Stream:
    response: httpx.Response
    lines: AsyncIterator[str]

    async def next(self, timeout: float = 10.0) -> tuple[str, str | None, Any]:
        """The next event (name, id, data) or comment ("comment", None, text)."""
        name, event_id = "message", None
        async with asyncio.timeout(timeout):
            async for line in self.lines:
                if line.startswith(":"):
                    return "comment", None, line[1:].strip()
                if line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    return name, event_id, json.loads(line[6:])
        raise EOFError("the stream ended")

    async def event(self, timeout: float = 10.0) -> tuple[str, str | None, Any]:
        """The next event, skipping heartbeats."""
        while True:
            item = await self.next(timeout)
            if item[0] != "comment":
                return item

    async def ended(self, timeout: float = 5.0) -> bool:
        try:
            await self.next(timeout)
        except EOFError:
            return True
        return False

    async def close(self) -> None:
        await self.response.aclose()


async def _open(client: httpx.AsyncClient, job_id: str, headers: dict[str, str],
                **extra: str) -> Stream | httpx.Response:
    """An open stream, or the refusal (its body read)."""
    req = client.build_request("GET", f"/v1/jobs/{job_id}/events", headers={**headers, **extra})
    r = await client.send(req, stream=True)
    if r.status_code != 200:
        await r.aread()
        await r.aclose()
        return r
    assert r.headers["content-type"].startswith("text/event-stream")
    return Stream(r, r.aiter_lines())


async def _stream(client: httpx.AsyncClient, job_id: str, headers: dict[str, str] = AUTH_A,
                  **extra: str) -> Stream:
    s = await _open(client, job_id, headers, **extra)
    assert isinstance(s, Stream), (s.status_code, s.text)
    return s


@asynccontextmanager
async def _client(api: Api, streams: int = 20) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=streams + 50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=api.base, limits=limits,
                                 timeout=httpx.Timeout(10.0, read=None)) as c:
        yield c


async def _submit(client: httpx.AsyncClient, n: int = 1, headers: dict[str, str] = AUTH_A
                  ) -> list[str]:
    rs = await asyncio.gather(*(client.post("/v1/jobs", json={"idea": f"streams test idea {i}"},
                                            headers=headers, timeout=30) for i in range(n)))
    assert all(r.status_code == 202 for r in rs), [r.text for r in rs if r.status_code != 202]
    return [r.json()["id"] for r in rs]


async def _settled(client: httpx.AsyncClient, timeout: float = 5.0) -> dict[str, Any]:
    """Wait until this process serves no stream and its watcher has stopped."""
    deadline = time.monotonic() + timeout
    while True:
        stats = (await client.get("/v1/streams", headers=AUTH_A)).json()
        if stats["open_in_process"] == 0 and not stats["watcher_running"]:
            return dict(stats)
        assert time.monotonic() < deadline, f"streams not freed after {timeout} s: {stats}"
        await asyncio.sleep(0.05)


def _write(db_url: str, fn: Any) -> None:
    """Move a job along the way a worker would: through the query functions, in one transaction."""
    from masterplan.db.session import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine).begin() as s:
            fn(s)
    finally:
        engine.dispose()


# -- tests -------------------------------------------------------------------------------
def test_healthz_and_submit_answer_promptly_with_120_streams_open(big_api: Api) -> None:
    async def main() -> None:
        async with _client(big_api, streams=120) as c, _client(big_api) as probe:
            jobs = await _submit(probe, 30)
            streams = await asyncio.gather(*(_stream(c, jobs[i % len(jobs)]) for i in range(120)))
            try:
                firsts = await asyncio.gather(*(s.event() for s in streams))
                assert {(name, data["status"]) for name, _, data in firsts} == {("progress", "queued")}
                stats = (await probe.get("/v1/streams", headers=AUTH_A)).json()
                assert stats["open_for_this_key"] == 120 and stats["watched_jobs"] == 30

                async def timed(req: Any) -> tuple[int, float]:
                    t0 = time.monotonic()
                    r = await req
                    return r.status_code, time.monotonic() - t0

                health = await asyncio.gather(*(timed(probe.get("/healthz")) for _ in range(20)))
                posts = await asyncio.gather(*(timed(probe.post(
                    "/v1/jobs", json={"idea": f"submitted under load {i}"}, headers=AUTH_A))
                    for i in range(20)))
                assert [code for code, _ in health] == [200] * 20
                assert [code for code, _ in posts] == [202] * 20
                slowest = max(t for _, t in health + posts)
                assert slowest < PROMPT, f"slowest answer {slowest:.2f} s with 120 streams open"
            finally:
                await asyncio.gather(*(s.close() for s in streams))
            await _settled(probe)

    asyncio.run(main())


def test_a_stream_follows_its_job_to_done_and_closes(big_api: Api) -> None:
    from masterplan.db import queries as q
    from masterplan.db.models import RunStatus, utcnow

    async def main() -> None:
        async with _client(big_api) as c:
            (job,) = await _submit(c)
            s = await _stream(c, job)
            name, first_id, data = await s.event()
            assert (name, data["status"], data["stages"]["market"]) == (
                "progress", "queued", {"status": "pending", "provider": None})
            assert set(data) == {"id", "status", "stages", "error"} and first_id

            _write(big_api.db_url, lambda ss: q.claim_stage(ss, job_id=job, stage="market",
                                                            claim_id="t1", lease_s=60))
            name, running_id, data = await s.event()
            assert (name, data["status"], data["stages"]["market"]["status"]) == (
                "progress", "running", "running")
            assert running_id != first_id

            def finish(ss: Any) -> None:
                q.finish_stage(ss, job_id=job, stage="market", status=RunStatus.SUCCEEDED,
                               provider="stub")
                q.update_job(ss, job_id=job, status="failed", error="stopped by the test",
                             finished_at=utcnow())

            _write(big_api.db_url, finish)
            name, _, data = await s.event()
            assert (name, data["status"], data["error"]) == ("done", "failed", "stopped by the test")
            assert data["stages"]["market"] == {"status": "succeeded", "provider": "stub"}
            assert await s.ended()

            # A finished job answers `done` at once; a missing job, or another key's, is a 404.
            t0 = time.monotonic()
            again = await _stream(c, job)
            assert (await again.event())[0] == "done" and await again.ended()
            assert time.monotonic() - t0 < PROMPT
            for job_id, headers in ((job, AUTH_B), ("no-such-job", AUTH_A)):
                r = await _open(c, job_id, headers)
                assert isinstance(r, httpx.Response) and r.status_code == 404
            await _settled(c)

    asyncio.run(main())


def test_closed_streams_are_freed_and_new_ones_accepted(small_api: Api) -> None:
    async def main() -> None:
        async with _client(small_api) as c:
            await _settled(c)
            jobs = await _submit(c, 2)
            for _ in range(3):  # open, close, open again: nothing accumulates
                streams = [await _stream(c, jobs[i % 2]) for i in range(3)]
                for s in streams:
                    assert (await s.event())[0] == "progress"
                stats = (await c.get("/v1/streams", headers=AUTH_A)).json()
                assert (stats["open_for_this_key"], stats["watched_jobs"], stats["watcher_running"]) \
                    == (3, 2, True)
                full = await _open(c, jobs[0], AUTH_A)
                assert isinstance(full, httpx.Response) and full.status_code == 429
                for s in streams:
                    await s.close()
                # Freed without waiting for the job to change or for a heartbeat to fail.
                stats = await _settled(c, timeout=2.0)
                assert stats["open_for_this_key"] == 0 and stats["watched_jobs"] == 0

    asyncio.run(main())


def test_the_caps_answer_429_with_retry_after_and_what_to_do(small_api: Api) -> None:
    async def main() -> None:
        async with _client(small_api) as c:
            await _settled(c)
            (job,) = await _submit(c)
            a = [await _stream(c, job) for _ in range(3)]
            try:
                r = await _open(c, job, AUTH_A)
                assert isinstance(r, httpx.Response) and r.status_code == 429
                assert int(r.headers["retry-after"]) > 0
                assert "MAX_STREAMS_PER_KEY=3" in r.json()["detail"]
                assert "close a stream" in r.json()["detail"]
                (b_job,) = await _submit(c, headers=AUTH_B)
                b = [await _stream(c, b_job, AUTH_B) for _ in range(2)]  # another key has room...
                try:
                    r = await _open(c, b_job, AUTH_B)  # ...until the process is full
                    assert isinstance(r, httpx.Response) and r.status_code == 429
                    assert "MAX_STREAMS=5" in r.json()["detail"]
                    assert "retry-after" in r.headers
                finally:
                    for s in b:
                        await s.close()
            finally:
                for s in a:
                    await s.close()
            await _settled(c)

    asyncio.run(main())


def test_heartbeats_and_a_reconnect_with_last_event_id(small_api: Api) -> None:
    from masterplan.db import queries as q

    async def main() -> None:
        async with _client(small_api) as c:
            await _settled(c)
            (job,) = await _submit(c)
            s = await _stream(c, job)
            _, seen, _ = await s.event()
            assert await s.next(timeout=3) == ("comment", None, "keep-alive")
            await s.close()

            # The client has the current state: it is not sent again, only heartbeats...
            s = await _stream(c, job, **{"Last-Event-ID": seen or ""})
            assert await s.next(timeout=3) == ("comment", None, "keep-alive")
            # ...then the next change.
            _write(small_api.db_url, lambda ss: q.claim_stage(ss, job_id=job, stage="risk",
                                                              claim_id="t2", lease_s=60))
            name, new_id, data = await s.event()
            assert name == "progress" and new_id != seen and data["stages"]["risk"]["status"] == "running"
            await s.close()
            await _settled(c)

    asyncio.run(main())
