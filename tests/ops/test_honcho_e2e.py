"""The Procfile, run by honcho against the local Redis and PostgreSQL, used as a person would:
submit a job over HTTP, wait for it, read it back, and watch the worker in Flower."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote_plus

import httpx

from masterplan.stages import PIPELINE
from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http, wait_job
from tests.conftest import fresh_pg_database
from tests.ops import Flower, flush_redis, hostname, ops_env, stage_of, tasks_of

REDIS_DB = 5
KEY = "honcho-key-0123456789"


def _honcho(*args: str) -> list[str]:
    return [str(BIN / "honcho"), "--no-colour", *args]


def _stop_leftovers(output: str) -> None:
    """honcho stops its children on SIGTERM; anything of ours still alive is ended here."""
    pids = [int(p) for p in re.findall(r"started \(pid=(\d+)\)", output)]
    deadline = time.monotonic() + 30
    for pid in pids:  # each child leads its own process group (honcho starts a new session)
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_honcho_runs_the_procfile_and_a_job_goes_through_it(tmp_path: Path, redis_url: str) -> None:
    flush_redis(REDIS_DB)
    password = secrets.token_urlsafe(16)
    no_dotenv = tmp_path / "empty.env"  # keep a developer's .env out of honcho's environment
    no_dotenv.write_text("")
    with fresh_pg_database("mp_honcho") as db_url:
        flower_port, port = free_port(), free_port()
        env = ops_env(REDIS_DB, db_url, API_KEYS=KEY, FLOWER_BASIC_AUTH=f"ops:{password}",
                      FLOWER_PORT=str(flower_port), WORKER_NAME="honcho", WORKER_CONCURRENCY="4")

        # Given the release phase has run (a platform runs it before each deploy)
        done = subprocess.run(_honcho("start", "-e", str(no_dotenv), "release"), cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "release.1 stopped (rc=0)" in done.stdout

        # When honcho starts the web, worker and flower processes
        honcho = Proc(_honcho("start", "-e", str(no_dotenv), "-p", str(port),
                              "web", "worker", "flower"), env, tmp_path / "honcho.log")
        try:
            base = f"http://127.0.0.1:{port}"  # honcho gives `web` the first port
            assert wait_http(f"{base}/readyz", timeout=90, proc=honcho).status_code == 200
            flower = Flower(flower_port, "ops", password)
            wait_http(f"{flower.base}/healthcheck", timeout=60, proc=honcho)
            worker = hostname("honcho")
            flower.wait_online([worker], timeout=90)

            # And a job is submitted over HTTP
            headers = {"Authorization": f"Bearer {KEY}"}
            r = httpx.post(f"{base}/v1/jobs", json={"idea": "a tool library for neighbours"},
                           headers=headers, timeout=15)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            # Then it finishes, and reading it back gives the whole masterplan
            assert wait_job(base, job_id, headers, timeout=120)["status"] == "succeeded"
            job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=15).json()
            assert job["idea"] == "a tool library for neighbours"
            assert [p["status"] for p in job["personas"]] == ["succeeded"] * 5
            assert job["synthesis"]["executive_summary"] and job["critique"] is not None
            assert job["usage"]["totals"]["input_tokens"] > 0

            # And Flower, behind its credentials, shows the worker online and what it ran
            assert httpx.get(f"{flower.base}/", timeout=15).status_code == 401
            assert httpx.get(f"{flower.base}/", auth=("ops", "wrong-password"),
                             timeout=15).status_code == 401
            page = flower.get("/")
            assert page.status_code == 200
            row_id = re.escape(quote_plus(worker))
            row = re.search(rf'<tr id="{row_id}">\s*<td>{re.escape(worker)}</td>(.*?)</tr>',
                            page.text, re.S)
            assert row, page.text[:2000]
            assert "<td>True</td>" in row.group(1)  # the Status column: online
            ran = tasks_of(flower.tasks(), [job_id])[job_id]
            assert sorted((t["name"], stage_of(t)) for t in ran) == sorted(
                ("masterplan.stage", st) for st in PIPELINE.names)
            assert {(t["state"], t["worker"]) for t in ran} == {("SUCCESS", worker)}
        finally:
            honcho.stop(timeout=40)
            _stop_leftovers(honcho.log.read_text(errors="replace"))
        out = honcho.log.read_text(errors="replace")
        assert password not in out, "a secret was printed"
        assert "flower: basic auth for ops" in out


def test_flower_refuses_to_start_without_basic_auth_and_names_the_variable() -> None:
    env = clean_env(REDIS_URL="redis://127.0.0.1:6379/5", PATH=f"{BIN}:{os.environ['PATH']}")
    r = subprocess.run(["python", "-m", "workers.flower"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith(
        "configuration error: FLOWER_BASIC_AUTH is not set")

    r = subprocess.run(["python", "-m", "workers.flower"], cwd=ROOT,
                       env=env | {"FLOWER_BASIC_AUTH": "ops:change-me-please"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "FLOWER_BASIC_AUTH" in r.stderr
    assert "change-me-please" not in r.stderr + r.stdout  # refused without being echoed


def test_flower_cookie_secret_is_stable_and_not_the_password() -> None:
    from workers.flower import cookie_secret, flower_argv

    a = cookie_secret("ops:correct-horse-battery", None)
    assert a is not None
    assert a == cookie_secret("ops:correct-horse-battery", None)  # same on every replica
    assert a != cookie_secret("ops:another-password-1", None)
    assert "correct-horse-battery" not in a
    assert cookie_secret("ops:correct-horse-battery", "explicit") == "explicit"
    argv = flower_argv({"FLOWER_PORT": "6001"}, "ops:correct-horse-battery")
    assert argv[:2] == ["flower", "--port=6001"] and f"--cookie_secret={a}" in argv
    assert flower_argv({}, None) == ["flower", "--port=5555"]  # no auth: Flower's own secret
