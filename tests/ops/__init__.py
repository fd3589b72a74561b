"""The deployment's process models, run for real: Procfile lines, Flower, several workers.

Helpers shared by the ops tests. Processes are started with testkit/procs.py; a Procfile line runs
under `sh -c` exactly as honcho or a platform runs it (with `exec`, so that a signal reaches the
process itself rather than the shell in front of it).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from masterplan.stages import PIPELINE, Kind
from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http
from tests.conftest import _redis_url

PROCFILE = ROOT / "Procfile"
STAGE_TASK = "masterplan.stage"
STAGES_PER_JOB = len(PIPELINE.stages)  # five personas, synthesis, critique: one call each
PERSONA_STAGES = PIPELINE.of_kind(Kind.PERSONA)
PIPELINE_STAGES = tuple(n for n in PIPELINE.names if n not in PERSONA_STAGES)


def procfile() -> dict[str, str]:
    """Process type -> command, as honcho reads the Procfile."""
    out: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def ops_env(redis_db: int, db_url: str, **extra: str) -> dict[str, str]:
    """A clean environment on our own Redis database, with the project's commands on PATH."""
    env = clean_env(REDIS_URL=_redis_url(redis_db), DATABASE_URL=db_url, LOG_LEVEL="INFO", **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def flush_redis(redis_db: int) -> None:
    import redis

    client = redis.Redis.from_url(_redis_url(redis_db))
    client.flushdb()
    client.close()


def run_line(kind: str, env: dict[str, str], log: Path, **extra: str) -> Proc:
    """Start the Procfile's `kind` process."""
    return Proc(["sh", "-c", "exec " + procfile()[kind]], env | extra, log)


def release(env: dict[str, str]) -> None:
    r = subprocess.run(["sh", "-c", procfile()["release"]], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


class Flower:
    """Flower's HTTP API, with its basic-auth credentials."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.auth = (user, password)

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", params=params, auth=self.auth, timeout=15)

    def tasks(self) -> dict[str, dict[str, Any]]:
        r = self.get("/api/tasks", limit=100_000)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def workers_online(self) -> set[str]:
        r = self.get("/workers", json=1)
        r.raise_for_status()
        return {w["hostname"] for w in r.json()["data"] if w.get("status")}

    def wait_online(self, names: Iterable[str], timeout: float = 60,
                    procs: Iterable[Proc] = ()) -> None:
        wanted = set(names)
        deadline = time.monotonic() + timeout
        seen: set[str] = set()
        while time.monotonic() < deadline:
            seen = self.workers_online()
            if wanted <= seen:
                return
            for p in procs:
                assert p.popen.poll() is None, f"exited early:\n{p.output()[-3000:]}"
            time.sleep(0.5)
        raise AssertionError(f"workers {sorted(wanted - seen)} not online in Flower: {seen}")


def start_flower(env: dict[str, str], log: Path) -> tuple[Proc, Flower]:
    """The Procfile's flower on a free port, answering, with fresh credentials."""
    import secrets

    port, password = free_port(), secrets.token_urlsafe(16)
    proc = run_line("flower", env, log, FLOWER_PORT=str(port),
                    FLOWER_BASIC_AUTH=f"ops:{password}")
    flower = Flower(port, "ops", password)
    wait_http(f"{flower.base}/healthcheck", timeout=60, proc=proc)
    return proc, flower


def start_api(env: dict[str, str], log: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = run_line("web", env, log, PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    assert wait_http(f"{base}/readyz", timeout=60, proc=proc).status_code == 200
    return proc, base


def hostname(worker_name: str) -> str:
    """The node name `-n NAME@%h` gives on this machine."""
    import socket

    return f"{worker_name}@{socket.gethostname()}"


def submit(base: str, key: str, n: int, idea: str = "used lab equipment") -> list[str]:
    ids = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=15) as c:
        for i in range(n):
            r = c.post("/v1/jobs", json={"idea": f"{idea} #{i}"})
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
    return ids


def wait_jobs(base: str, key: str, job_ids: list[str], timeout: float = 180) -> dict[str, Any]:
    """Every job's final JSON, once all have finished."""
    done: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=15) as c:
        while time.monotonic() < deadline and len(done) < len(job_ids):
            for job_id in job_ids:
                if job_id not in done:
                    job = c.get(f"/v1/jobs/{job_id}").json()
                    if job.get("status") in ("succeeded", "failed"):
                        done[job_id] = job
            time.sleep(0.5)
    missing = [j for j in job_ids if j not in done]
    assert not missing, f"{len(missing)} of {len(job_ids)} jobs unfinished after {timeout} s"
    return done


def ok_calls_per_stage(db_url: str, job_ids: list[str]) -> Counter[tuple[str, str]]:
    """(job, stage) -> number of successful LLM calls in the ledger."""
    import sqlalchemy as sa

    from masterplan.db.models import LLMCall
    from masterplan.db.session import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            rows = c.execute(sa.select(LLMCall.job_id, LLMCall.stage)
                             .where(LLMCall.outcome == "ok", LLMCall.job_id.in_(job_ids))).all()
    finally:
        engine.dispose()
    return Counter((r[0], r[1]) for r in rows)


def assert_each_job_completed_once(db_url: str, jobs: dict[str, Any]) -> None:
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, [
        (j["id"], j["status"], j.get("error")) for j in jobs.values() if j["status"] != "succeeded"]
    calls = ok_calls_per_stage(db_url, list(jobs))
    assert set(calls.values()) == {1}, {k: n for k, n in calls.items() if n != 1}
    per_job = Counter(job_id for job_id, _ in calls)
    assert set(per_job.values()) == {STAGES_PER_JOB} and len(per_job) == len(jobs), per_job


Task = dict[str, Any]


def stage_of(task: Task) -> str:
    """The stage a Flower task record ran (from its kwargs, which Flower shows as text)."""
    m = re.search(r"'stage': '([a-z_]+)'", task.get("kwargs") or "")
    return m.group(1) if m else "?"


def tasks_of(flower_tasks: dict[str, Task], job_ids: Iterable[str]) -> dict[str, list[Task]]:
    """Flower's task records grouped by job (tasks carry the job id in their kwargs)."""
    by_job: dict[str, list[Task]] = {j: [] for j in job_ids}
    for task in flower_tasks.values():
        for job_id in by_job:
            if job_id in (task.get("kwargs") or ""):
                by_job[job_id].append(task)
    return by_job
