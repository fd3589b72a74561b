"""The page in a real browser: the API served by uvicorn (in a thread, on a real socket), a real
Celery worker consuming from Redis, PostgreSQL, two local fake providers (anthropic, then
google), and the system's Chromium driven by Playwright.

The same API runs twice on one runtime's services: with API keys (the page asks for one) and
with AUTH_DISABLED=true (the server renders a job's page whole). Chromium comes from the system
(`apt-get install chromium`); without it these tests skip, and fail under CI=true.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.fake_provider import FakeProvider, default_responder
from testkit.procs import free_port
from tests.conftest import CI, REDIS_URL, make_settings
from tests.integration.conftest import fake_env

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
KEY = "web-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


def missing(what: str, why: object) -> None:
    msg = f"{what} is not available ({why}); the browser tests need it"
    if CI:
        pytest.fail(msg)
    pytest.skip(msg)


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """The app on a free port of 127.0.0.1 (uvicorn in a thread); yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Web:
    base: str  # the API with keys
    open_base: str  # the same API with AUTH_DISABLED=true
    runtime: Any
    fakes: dict[str, FakeProvider]

    def submit(self, idea: str, *, keyed: bool = True) -> str:
        base, headers = (self.base, AUTH) if keyed else (self.open_base, {})
        r = httpx.post(f"{base}/v1/jobs", json={"idea": idea}, headers=headers, timeout=10)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def wait(self, job_id: str, *, keyed: bool = True, timeout: float = 60) -> dict[str, Any]:
        base, headers = (self.base, AUTH) if keyed else (self.open_base, {})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
            if job["status"] not in ("queued", "running"):
                return job  # type: ignore[no-any-return]
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} not finished after {timeout} s")

    def calls(self, job_id: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.base}/v1/jobs/{job_id}/calls", headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["items"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def web(redis_url: str, pg_migrated: str) -> Iterator[Web]:
    from api.factory import create_app
    from masterplan.runtime import build_runtime
    from workers import app
    from workers import runtime as worker_runtime
    from workers.embedded import embedded_worker

    with FakeProvider(flavor="anthropic", api_key="sk-a") as a, \
            FakeProvider(flavor="gemini", api_key="sk-g") as g:
        env = {"REDIS_URL": REDIS_URL, "DATABASE_URL": pg_migrated,
               **fake_env("anthropic", a, kind="anthropic"), **fake_env("google", g),
               "GOOGLE_BASE_URL": g.url + "/v1beta/openai/"}
        keyed = make_settings({**env, "API_KEYS": KEY})
        rt = build_runtime(keyed)
        open_rt = build_runtime(make_settings({**env, "AUTH_DISABLED": "true"}))
        worker_runtime.configure(keyed)
        worker_runtime.set_runtime(rt)
        try:
            with embedded_worker(app, concurrency=8, hostname="web@localhost"), \
                    serve(create_app(runtime=rt)) as base, \
                    serve(create_app(runtime=open_rt)) as open_base:
                yield Web(base, open_base, rt, {"anthropic": a, "google": g})
        finally:
            worker_runtime.set_runtime(None)
            rt.close()
            open_rt.close()


@pytest.fixture
def fresh(web: Web, redis_client: Any) -> Web:
    """The fakes answering normally again, and no cooldown or bucket left from another test
    (`redis_client` forgets this run's limiter state)."""
    for fake in web.fakes.values():
        fake.reset()
        fake.responder = default_responder
        fake.latency_s = 0.0
    return web


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        missing(f"Chromium at {CHROMIUM}", "not installed: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing("Playwright for Python", exc)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        yield b
        b.close()


@dataclass
class Tab:
    """A page in a fresh browser context, with every request it made and every error it logged
    (a policy violation, such as an inline script or style, is logged as an error)."""

    page: Any
    requests: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def enter_key(self, key: str = KEY) -> None:
        self.page.fill("#api-key", key)
        self.page.press("#api-key", "Enter")
        self.page.wait_for_selector("#key-set", state="visible")


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    t = Tab(page)
    page.on("request", lambda r: t.requests.append(r))
    page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: t.errors.append(str(e)))
    page.on("dialog", lambda d: (t.errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield t
    context.close()
