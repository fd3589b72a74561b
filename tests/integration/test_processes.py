"""The real processes a user starts: `masterplan demo`, `alembic`, `uvicorn`, `celery worker`."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http, wait_job
from tests.conftest import _redis_url, fresh_pg_database

PROC_REDIS = _redis_url(4)  # separate from the in-process worker's database


def test_demo_runs_a_whole_job_on_the_embedded_default(tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "masterplan"), "demo", "a marketplace for used lab equipment"],
                       cwd=tmp_path, env=clean_env(COLUMNS="100"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for text in ("Masterplan", "Roadmap", "Devil's advocate", "Verdict", "Usage by stage",
                 "synthesis", "succeeded"):
        assert text in out, f"{text!r} missing from:\n{out}"
    db = sqlite3.connect(tmp_path / "masterplan.db")
    assert db.execute("SELECT status FROM jobs").fetchall() == [("succeeded",)]
    assert db.execute("SELECT count(*) FROM llm_calls WHERE outcome = 'ok'").fetchone() == (7,)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_api_and_worker_processes_run_a_job_on_redis_and_postgres(
        tmp_path: Path, redis_url: str, broker: str, request: pytest.FixtureRequest) -> None:
    """With RabbitMQ as the broker, Redis keeps the rate limits and cooldowns."""
    brokers = {"CELERY_BROKER_URL": request.getfixturevalue("amqp_url")} if broker == "rabbitmq" else {}
    with fresh_pg_database("mp_proc") as db_url:
        env = clean_env(REDIS_URL=PROC_REDIS, DATABASE_URL=db_url, API_KEYS="proc-key",
                        GROQ_API_KEY="", LOG_LEVEL="INFO", **brokers)
        migrate = subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert migrate.returncode == 0, migrate.stderr
        port = free_port()
        worker = Proc([str(BIN / "celery"), "-A", "workers", "worker", "-P", "threads", "-c", "4",
                       "--hostname", "proc1@%h", "-l", "INFO"], env, tmp_path / "worker.log")
        api = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port)], env,
                   tmp_path / "api.log")
        try:
            base = f"http://127.0.0.1:{port}"
            assert wait_http(f"{base}/readyz", proc=api).status_code == 200
            worker.wait_for_text("ready.", timeout=30)
            headers = {"Authorization": "Bearer proc-key"}
            r = httpx.post(f"{base}/v1/jobs", json={"idea": "bike repair subscriptions"},
                           headers=headers)
            assert r.status_code == 202, r.text
            job = wait_job(base, r.json()["id"], headers)
            assert job["status"] == "succeeded", job
            assert job["synthesis"]["executive_summary"] and job["critique"]["score"] >= 0
            # Both processes say, at start-up, the chain the router really used.
            assert "provider chain: stub(stub-1, unlimited)" in worker.output()
            assert "provider chain: stub(stub-1, unlimited)" in api.output()
        finally:
            assert worker.stop() == 0, worker.output()[-2000:]
            api.stop()


def test_api_and_worker_refuse_a_database_that_is_behind(tmp_path: Path, redis_url: str) -> None:
    with fresh_pg_database("mp_behind") as db_url:
        env = clean_env(REDIS_URL=PROC_REDIS, DATABASE_URL=db_url, API_KEYS="k")
        worker = subprocess.run([str(BIN / "celery"), "-A", "workers", "worker", "-P", "solo"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        api = subprocess.run([str(BIN / "uvicorn"), "api.main:app", "--port", str(free_port())],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    for proc in (worker, api):
        assert proc.returncode != 0
        assert "run `alembic upgrade head`" in proc.stdout + proc.stderr


def test_a_bad_setting_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    env = clean_env(GROQ_TPM="six thousand", API_KEYS="k")
    for cmd in ([str(BIN / "celery"), "-A", "workers", "worker"],
                [sys.executable, "-c", "import api.main"]):
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines()[-1] == (
            "configuration error: GROQ_TPM='six thousand' is not a valid int")


def test_the_api_refuses_to_start_without_keys_unless_auth_is_disabled() -> None:
    r = subprocess.run([sys.executable, "-c", "import api.main"], cwd=ROOT, env=clean_env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "API_KEYS" in r.stderr
    ok = subprocess.run([sys.executable, "-c", "import api.main"], cwd=ROOT,
                        env=clean_env(AUTH_DISABLED="true"), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_dev_serves_the_http_api_on_the_embedded_default(tmp_path: Path) -> None:
    port = free_port()
    dev = Proc([str(BIN / "masterplan"), "dev", "--port", str(port)], clean_env(), tmp_path / "dev.log",
               cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", proc=dev)
        r = httpx.post(f"{base}/v1/jobs", json={"idea": "a tool library for apartment buildings"})
        assert r.status_code == 202, r.text
        job = wait_job(base, r.json()["id"], {})
        assert job["status"] == "succeeded"
        assert "authentication disabled" in dev.output()
    finally:
        dev.stop()
