"""A whole stack in the test process: the HTTP API (TestClient) and a real Celery worker
(threads pool, in a thread) consuming from the real Redis broker, on PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import REDIS_URL, make_settings

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}
AUTH_B = {"Authorization": f"Bearer {KEY_B}"}


@dataclass
class Stack:
    settings: Any
    runtime: Any
    client: Any
    fakes: dict[str, Any] = field(default_factory=dict)

    def submit(self, idea: str = "a marketplace for used lab equipment", **body: Any) -> str:
        r = self.client.post("/v1/jobs", json={"idea": idea, **body}, headers=AUTH_A)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def wait(self, job_id: str, timeout: float = 60, headers: dict[str, str] = AUTH_A) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}", headers=headers).json()
            if job["status"] not in ("queued", "running"):
                return job  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")

    def calls(self, job_id: str) -> list[Any]:
        from masterplan.db import queries as q

        with self.runtime.sessions() as s:
            return list(q.llm_calls(s, job_id=job_id))


@pytest.fixture(scope="session")
def worker(redis_url: str, pg_migrated: str) -> Iterator[Any]:
    """One real Celery worker for the session, consuming both queues from Redis."""
    from masterplan.runtime import build_runtime
    from workers import app
    from workers import runtime as worker_runtime
    from workers.embedded import embedded_worker

    assert app.conf.broker_url == REDIS_URL
    # The worker's start-up check must see the test database, not whatever DATABASE_URL says.
    settings = make_settings({"REDIS_URL": REDIS_URL, "DATABASE_URL": pg_migrated})
    worker_runtime.configure(settings)
    worker_runtime.set_runtime(build_runtime(settings))
    with embedded_worker(app, concurrency=8, loglevel="WARNING", hostname="itest@localhost") as w:
        yield w


@pytest.fixture
def make_stack(worker: Any, pg_migrated: str, redis_client: Any) -> Iterator[Callable[..., Stack]]:
    """Build a stack with extra environment (providers, limits); the worker picks it up."""
    from fastapi.testclient import TestClient

    from api.factory import create_app
    from masterplan.runtime import build_runtime
    from workers import runtime as worker_runtime

    made: list[tuple[Any, Any]] = []

    def make(env: dict[str, str] | None = None, **fakes: Any) -> Stack:
        settings = make_settings({"REDIS_URL": REDIS_URL, "DATABASE_URL": pg_migrated,
                                  "API_KEYS": f"{KEY_A},{KEY_B}", **(env or {})})
        rt = build_runtime(settings)
        worker_runtime.set_runtime(rt)
        client = TestClient(create_app(runtime=rt))
        client.__enter__()
        made.append((client, rt))
        return Stack(settings, rt, client, fakes)

    yield make
    for client, rt in made:
        client.__exit__(None, None, None)
        rt.close()
    worker_runtime.set_runtime(None)


def fake_env(name: str, fake: Any, *, kind: str = "openai", **extra: str) -> dict[str, str]:
    """Environment that points provider `name` at a local fake server (limits high unless given)."""
    base = fake.anthropic_base_url if kind == "anthropic" else fake.openai_base_url
    env = {f"{name.upper()}_BASE_URL": base, f"{name.upper()}_API_KEY": fake.api_key or "sk-test",
           f"{name.upper()}_TPM": "10000000", f"{name.upper()}_RPM": "100000"}
    env.update({f"{name.upper()}_{k.upper()}": v for k, v in extra.items()})
    return env
