"""The interview on the real processes: `uvicorn api.main:app` and a `celery -A workers worker
-Q interactive` process on Redis and PostgreSQL, the provider served by the local fake at a
paced token rate. A real HTTP client reads a turn as it streams, its connection is cut
mid-turn, and reconnecting with Last-Event-ID gives exactly the rest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from testkit.fake_provider import FakeProvider
from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http
from tests.conftest import _redis_url, fresh_pg_database
from tests.integration.test_interviews import events

PROC_REDIS = _redis_url(4)
HEADERS = {"Authorization": "Bearer proc-key"}


def _read(client: httpx.Client, method: str, url: str, *, stop_after_tokens: int | None = None,
          headers: dict[str, str] = HEADERS, **kw: Any) -> list[tuple[str, str, dict[str, Any]]]:
    got: list[tuple[str, str, dict[str, Any]]] = []
    with client.stream(method, url, headers=headers, timeout=30, **kw) as r:
        assert r.status_code == 200, r.read()
        for e in events(r.iter_lines()):
            got.append(e)
            tokens = sum(name == "token" for _, name, _ in got)
            if e[1] == "end" or (stop_after_tokens is not None and tokens == stop_after_tokens):
                break  # leaving the block closes the connection
    return got


def test_a_turn_cut_mid_stream_resumes_on_the_real_processes(tmp_path: Path, redis_url: str
                                                             ) -> None:
    with fresh_pg_database("mp_iv") as db_url, \
            FakeProvider(api_key="sk-iv", chunk_chars=4) as fake:
        fake.chunk_delay_s = 0.05
        env = clean_env(REDIS_URL=PROC_REDIS, DATABASE_URL=db_url, API_KEYS="proc-key",
                        LLM_PROVIDERS="openai", OPENAI_BASE_URL=fake.openai_base_url,
                        OPENAI_API_KEY="sk-iv", LOG_LEVEL="INFO")
        migrate = subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert migrate.returncode == 0, migrate.stderr
        port = free_port()
        worker = Proc([str(BIN / "celery"), "-A", "workers", "worker", "-Q", "interactive", "-P",
                       "threads", "-c", "4", "--hostname", "iv@%h", "-l", "INFO"], env,
                      tmp_path / "worker.log")
        api = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port)], env,
                   tmp_path / "api.log")
        try:
            base = f"http://127.0.0.1:{port}"
            assert wait_http(f"{base}/readyz", proc=api).status_code == 200
            worker.wait_for_text("ready.", timeout=30)
            with httpx.Client(base_url=base) as client:
                r = client.post("/v1/interviews", json={"idea": "bike repair subscriptions"},
                                headers=HEADERS)
                assert r.status_code == 201, r.text
                iid, url = r.json()["id"], r.json()["turns"][0]["events"]
                head = _read(client, "GET", url, stop_after_tokens=3)
                assert [n for _, n, _ in head] == ["token"] * 3
                rest = _read(client, "GET", url, headers={**HEADERS, "Last-Event-ID": head[-1][0]})
                assert [n for _, n, _ in rest][-2:] == ["turn", "end"]
                text = "".join(d["text"] for _, n, d in head + rest if n == "token")
                body = client.get(f"/v1/interviews/{iid}", headers=HEADERS).json()
                assert body["turns"][0]["question"] == text and len(text) > 12
                assert body["turns"][0]["provider"] == "openai"
                # The next turn, streamed by the POST that answers.
                nxt = _read(client, "POST", f"/v1/interviews/{iid}/turns",
                            json={"answer": "commuters"})
                assert nxt[-2][1] == "turn" and nxt[-2][2]["n"] == 2
                assert json.dumps(nxt[-2][2]["structured"]["choices"])
            assert "masterplan.interview_turn" in worker.output()
        finally:
            assert worker.stop() == 0, worker.output()[-2000:]
            api.stop()
