"""What every benchmark needs: Redis databases, a fresh PostgreSQL database, worker and API
processes started and stopped by PID, resource sampling, and repeat + median/spread."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

from testkit.procs import BIN, ROOT, Proc, clean_env, free_port, wait_http

# Benchmarks own Redis databases 8-10 (tests use 3-7); each is flushed before use.
OURS_DB, RAW_DB, RATELIMIT_DB = 8, 9, 10
API_KEY = "bench-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LOG_DIR = ROOT / "bench" / "results" / "logs"


# ------------------------------------------------------------------ services


def redis_url(db: int) -> str:
    """The server from REDIS_URL (or the local default) with the benchmark's database."""
    base = urlsplit(os.environ.get("BENCH_REDIS_URL") or "redis://127.0.0.1:6379/0")
    return urlunsplit((base.scheme, base.netloc, f"/{db}", "", ""))


def flush_redis(db: int) -> None:
    import redis

    client = redis.Redis.from_url(redis_url(db))
    try:
        client.flushdb()
    finally:
        client.close()


def ours_redis() -> Any:
    """A client of the benchmarks' own Redis database (for routers built in this process)."""
    import redis

    return redis.Redis.from_url(redis_url(OURS_DB))


def forget_keys(prefix: str) -> None:
    """This run's keys only (those under `prefix`): the Redis database is shared."""
    client = ours_redis()
    try:
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def pg_admin_url() -> str:
    return os.environ.get("BENCH_PG_ADMIN_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_database(prefix: str = "mp_bench") -> Iterator[str]:
    """A new PostgreSQL database migrated to head (`alembic upgrade head`), dropped afterwards."""
    import sqlalchemy as sa

    from masterplan.db.session import make_engine, upgrade

    admin_url = pg_admin_url()
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(admin_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def settings_for(env: dict[str, str]) -> Any:
    from masterplan.settings import load_settings

    return load_settings(env, env_file=None)


# ------------------------------------------------------------------ processes


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    total = 0.0
    for p in tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Sampler:
    """Samples a process tree's RSS in a thread; `peak` is the largest total seen."""

    def __init__(self, pids: list[int], interval: float = 0.25) -> None:
        self.pids, self.interval = pids, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(tree_rss(p) for p in self.pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _ping(app: Any, hostname: str, timeout: float) -> bool:
    """A control ping through `app` (configured like the worker's app: same key prefix)."""
    try:
        return bool(app.control.ping(destination=[hostname], timeout=timeout))
    except Exception:  # noqa: BLE001 - not up yet
        return False


@dataclass
class Worker:
    """A `celery worker` process group that we started; stopped by its process group id."""

    proc: Proc
    hostname: str
    pool: str
    concurrency: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        return tree_rss(self.pid)

    def cpu(self) -> float:
        return tree_cpu(self.pid)

    def child_pids(self) -> list[int]:
        return [p.pid for p in tree(self.pid)[1:]]

    def stop(self) -> None:
        # Cold shutdown (SIGQUIT): what is left in the queues is thrown away with the database.
        self.proc.stop(signal.SIGQUIT, timeout=10)


def start_worker(
    app: str, env: dict[str, str], *, probe: Any, pool: str, concurrency: int, name: str,
    ready_timeout: float = 60, queues: str = "interactive,personas,pipeline",
) -> Worker:
    """`celery -A <app> worker -P <pool> -c <n>`, waiting until it answers a ping sent
    through `probe` (a Celery app configured as the worker's)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    hostname = f"{name}-{uuid.uuid4().hex[:6]}@bench"
    # The Procfile's flags (its queues, no gossip, no mingle), for ours and raw alike.
    args = [str(BIN / "celery"), "-A", app, "worker", "-Q", queues, "-P", pool,
            "-c", str(concurrency), "--hostname", hostname, "-l", "INFO", "--without-gossip",
            "--without-mingle"]
    proc = Proc(args, clean_env(**env), LOG_DIR / f"{name}.log")
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"worker {name} exited: {proc.output()[-3000:]}")
        if _ping(probe, hostname, 0.5):
            return Worker(proc, hostname, pool, concurrency)
    proc.stop(signal.SIGKILL)
    raise RuntimeError(f"worker {name} not ready after {ready_timeout} s: {proc.output()[-3000:]}")


@contextmanager
def workers(app: str, env: dict[str, str], *, probe: Any, pool: str, concurrency: int,
            name: str, count: int = 1) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        for i in range(count):
            started.append(start_worker(app, env, probe=probe, pool=pool,
                                        concurrency=concurrency, name=f"{name}{i}"))
        yield started
    finally:
        for w in started:
            w.stop()


@contextmanager
def api_process(env: dict[str, str], name: str = "api") -> Iterator[str]:
    """`uvicorn api.main:app` on a free port; yields its base URL."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = Proc([str(BIN / "uvicorn"), "api.main:app", "--port", str(port), "--log-level",
                 "warning"], clean_env(**env), LOG_DIR / f"{name}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base
    finally:
        proc.stop()


@contextmanager
def fake_provider_process(*args: str, name: str = "fake") -> Iterator[str]:
    """`python -m testkit.fake_provider ...`; yields its URL."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    proc = Proc([str(BIN / "python"), "-m", "testkit.fake_provider", "--port", "0",
                 *args], clean_env(), LOG_DIR / f"{name}.log")
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            for line in proc.output().splitlines():
                if line.startswith("READY "):
                    url = line.split()[1]
            if proc.popen.poll() is not None:
                raise RuntimeError(f"fake provider exited: {proc.output()[-2000:]}")
            time.sleep(0.05)
        if url is None:
            raise RuntimeError("fake provider did not start")
        yield url
    finally:
        proc.stop()


def migrate_with_alembic(env: dict[str, str]) -> None:
    """The command an operator runs (used once to prove the database is what production gets)."""
    r = subprocess.run([str(BIN / "alembic"), "upgrade", "head"], cwd=ROOT, env=clean_env(**env),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)


# ------------------------------------------------------------------ statistics


@dataclass
class Figure:
    """Repeated measurements of one quantity."""

    name: str
    unit: str
    runs: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return summarize(self.runs) | {"unit": self.unit}


def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the spread (max - min) as a share of the median."""
    if not values:
        return {"median": None, "min": None, "max": None, "spread": None, "runs": []}
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "median": round(med, 6), "min": round(lo, 6), "max": round(hi, 6),
        "spread": round((hi - lo) / med, 4) if med else None,
        "runs": [round(v, 6) for v in values],
    }


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def repeat(n: int, fn: Callable[[int], dict[str, float]]) -> dict[str, list[float]]:
    """Run `fn(i)` n times; collect each returned figure into a list of runs."""
    out: dict[str, list[float]] = {}
    for i in range(n):
        for k, v in fn(i).items():
            out.setdefault(k, []).append(float(v))
    return out


def system_cpu() -> float:
    """CPU seconds used by the whole machine so far (all cores, busy time only)."""
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


__all__ = [
    "API_KEY", "AUTH", "OURS_DB", "RATELIMIT_DB", "RAW_DB", "Figure", "Sampler", "Worker",
    "api_process", "fake_provider_process", "flush_redis", "fresh_database", "log",
    "migrate_with_alembic", "percentile", "redis_url", "repeat", "settings_for", "start_worker",
    "summarize", "system_cpu", "tree_rss", "wait_until", "workers",
]
