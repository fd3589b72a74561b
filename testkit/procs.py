"""Start and stop the project's real processes (API, workers, CLI) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Variables a test process must not inherit from the developer's shell or CI.
_SCRUB = ("REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "API_KEYS",
          "AUTH_DISABLED", "LLM_PROVIDERS", "ANTHROPIC_API_KEY", "GOOGLE_API_KEY", "GROQ_API_KEY",
          "OPENAI_API_KEY", "FLOWER_BASIC_AUTH")


def clean_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    base["PYTHONUNBUFFERED"] = "1"
    return base | env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output goes to a log file we can read back."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=self._fh,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")

    def wait_for_text(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen in {timeout} s; output:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)  # the process group we started, nothing else
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._fh.close()
        return int(self.popen.returncode)


def wait_http(url: str, timeout: float = 30, proc: Proc | None = None, **kw: Any) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = httpx.get(url, timeout=2, **kw)
            if r.status_code < 500:
                return r
            last = r.status_code
        except httpx.HTTPError as exc:
            last = exc
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"process exited: {proc.output()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"{url} not answering after {timeout} s: {last}")


def wait_job(base: str, job_id: str, headers: dict[str, str], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=5).json()
        if job.get("status") in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}")
