"""Horizontal scaling, as a deployment does it: more worker processes on the same Redis and
PostgreSQL, each started from the Procfile's `worker` line with its own node name. Flower, fed
by the workers' task events, says which worker ran what; the ledger says every stage of every
job was answered exactly once."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from testkit.procs import Proc
from tests.conftest import fresh_pg_database
from tests.ops import (
    PERSONA_STAGES,
    PIPELINE_STAGES,
    STAGE_TASK,
    STAGES_PER_JOB,
    Task,
    assert_each_job_completed_once,
    flush_redis,
    hostname,
    ops_env,
    release,
    run_line,
    stage_of,
    start_api,
    start_flower,
    submit,
    tasks_of,
    wait_jobs,
)

KEY = "scale-key-0123456789"
TASKS_PER_JOB = STAGES_PER_JOB  # one task per stage


class Cluster:
    """Flower, the API and any number of workers on one Redis database and one PostgreSQL."""

    def __init__(self, stack: ExitStack, tmp: Path, env: dict[str, str], db_url: str) -> None:
        self.stack, self.tmp, self.env, self.db_url = stack, tmp, env, db_url
        self.workers: dict[str, Proc] = {}
        self.flower_proc, self.flower = start_flower(env, tmp / "flower.log")
        self.stack.callback(self.flower_proc.stop)
        self.api_proc, self.base = start_api(env, tmp / "api.log")
        self.stack.callback(self.api_proc.stop)

    def add_worker(self, name: str, **env: str) -> Proc:
        proc = run_line("worker", self.env, self.tmp / f"worker-{name}.log", WORKER_NAME=name,
                        **env)
        self.stack.callback(proc.stop)
        self.workers[hostname(name)] = proc
        return proc

    def wait_online(self, *names: str) -> None:
        self.flower.wait_online([hostname(n) for n in names], timeout=90,
                                procs=self.workers.values())

    def job_tasks(self, job_ids: list[str]) -> dict[str, list[Task]]:
        return tasks_of(self.flower.tasks(), job_ids)


@contextmanager
def cluster(tmp_path: Path, redis_db: int, **env: str) -> Iterator[Cluster]:
    flush_redis(redis_db)
    with fresh_pg_database("mp_scale") as db_url, ExitStack() as stack:
        e = ops_env(redis_db, db_url, API_KEYS=KEY, **env)
        release(e)
        yield Cluster(stack, tmp_path, e, db_url)


def _settled_tasks(c: Cluster, job_ids: list[str], timeout: float = 60) -> dict[str, list[Task]]:
    """Flower's view once it has seen every task of these jobs succeed (events can trail)."""
    deadline = time.monotonic() + timeout
    while True:
        by_job = c.job_tasks(job_ids)
        done = all(sum(t["state"] == "SUCCESS" for t in ts) == TASKS_PER_JOB
                   for ts in by_job.values())
        if done or time.monotonic() > deadline:
            return by_job
        time.sleep(0.5)


def test_a_burst_spreads_over_every_worker_and_each_job_completes_once(tmp_path: Path,
                                                                        redis_url: str) -> None:
    # Each LLM call takes 1 s, so the burst keeps two 2-slot workers busy for half a minute.
    with cluster(tmp_path, 6, STUB_LATENCY_MS="1000", WORKER_CONCURRENCY="2") as c:
        c.add_worker("a")
        c.add_worker("b")
        c.wait_online("a", "b")

        # When 16 jobs arrive in a burst
        job_ids = submit(c.base, KEY, 16)
        # and a third worker joins once the first tasks have finished
        deadline = time.monotonic() + 60
        while sum(t["state"] == "SUCCESS" for t in c.flower.tasks().values()) < 4:
            assert time.monotonic() < deadline, "no task finished within 60 s"
            time.sleep(0.5)
        c.add_worker("c")
        c.wait_online("a", "b", "c")

        # Then every job completes, each stage answered exactly once
        jobs = wait_jobs(c.base, KEY, job_ids, timeout=240)
        assert_each_job_completed_once(c.db_url, jobs)

        # And the tasks were spread over all three workers, the late one included
        by_job = _settled_tasks(c, job_ids)
        for job_id, tasks in by_job.items():
            names = Counter((t["name"], stage_of(t)) for t in tasks if t["state"] == "SUCCESS")
            assert names == Counter({(STAGE_TASK, st): 1 for st in (*PERSONA_STAGES,
                                                                     *PIPELINE_STAGES)}), job_id
        ran = Counter(t.get("worker") for ts in by_job.values() for t in ts
                      if t["state"] == "SUCCESS")
        print(f"\ntasks per worker (16 jobs, {sum(ran.values())} tasks): {dict(ran)}")
        assert set(ran) == set(c.workers), ran  # each of the three ran some, c included

        for proc in c.workers.values():
            assert proc.stop() == 0, proc.output()[-2000:]


def test_a_worker_stopped_with_sigterm_finishes_its_tasks_and_the_job_completes_elsewhere(
        tmp_path: Path, redis_url: str) -> None:
    with cluster(tmp_path, 7, STUB_LATENCY_MS="2500", WORKER_CONCURRENCY="2") as c:
        a = c.add_worker("a")
        c.add_worker("b")
        c.wait_online("a", "b")
        job_ids = submit(c.base, KEY, 2)

        # Given worker a is in the middle of a persona call
        deadline = time.monotonic() + 60
        while True:
            running = [t for t in c.flower.tasks().values()
                       if t.get("worker") == hostname("a") and t["state"] == "STARTED"]
            if running:
                break
            assert time.monotonic() < deadline, "worker a never started a task"
            time.sleep(0.1)

        # When it receives SIGTERM
        stopped_at = time.time()
        assert a.stop(signal.SIGTERM, timeout=60) == 0, a.output()[-3000:]
        assert "Warm shutdown" in a.log.read_text()

        # Then the jobs still complete, on b, with no stage answered twice
        jobs = wait_jobs(c.base, KEY, job_ids, timeout=180)
        assert_each_job_completed_once(c.db_url, jobs)
        by_job = _settled_tasks(c, job_ids)
        tasks = [t for ts in by_job.values() for t in ts]
        # the calls a was making when told to stop were finished, not dropped
        on_a = {t["uuid"]: t for t in tasks if t.get("worker") == hostname("a")}
        for t in running:
            assert on_a[t["uuid"]]["state"] == "SUCCESS", on_a[t["uuid"]]
        # a took nothing new after the signal; everything from then on ran on b
        assert all((t["started"] or 0) <= stopped_at for t in on_a.values())
        after = [t for t in tasks if (t["started"] or 0) > stopped_at]
        assert after and {t.get("worker") for t in after} == {hostname("b")}
        assert {stage_of(t) for t in after} >= set(PIPELINE_STAGES)


def test_persona_and_pipeline_queues_can_have_their_own_workers(tmp_path: Path,
                                                                redis_url: str) -> None:
    with cluster(tmp_path, 6, STUB_LATENCY_MS="50") as c:
        c.add_worker("personas", WORKER_QUEUES="personas", WORKER_CONCURRENCY="5")
        c.add_worker("pipeline", WORKER_QUEUES="pipeline", WORKER_CONCURRENCY="2")
        c.wait_online("personas", "pipeline")

        job_ids = submit(c.base, KEY, 3)
        jobs = wait_jobs(c.base, KEY, job_ids, timeout=120)

        assert_each_job_completed_once(c.db_url, jobs)
        tasks = [t for ts in _settled_tasks(c, job_ids).values() for t in ts]
        by_worker = {(stage_of(t), t.get("worker")) for t in tasks}
        assert by_worker == {(st, hostname("personas")) for st in PERSONA_STAGES} | {
            (st, hostname("pipeline")) for st in PIPELINE_STAGES}
