"""One scenario's whole system: its own Redis, its own database, fake providers, the API and
two workers, wired by environment exactly as a deployment is; and the client's side of it
(submitting over HTTP, watching jobs over HTTP, the fakes' counters).

The broker is the scenario's Redis, or (`broker="rabbitmq"`) a virtual host of its own on the
local RabbitMQ, made before any process starts and deleted after they are all stopped; Redis
then keeps only the rate-limit buckets and cooldowns."""

from __future__ import annotations

import os
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_measure import Result, measure_fakes, measure_sql
from bench.chaos_services import (
    Api,
    FakeProcess,
    PgCluster,
    RedisServer,
    Worker,
    create_database,
    kill_tree,
    rabbitmq_vhost,
    server_database,
)
from testkit.procs import BIN, clean_env

API_KEY = "chaos-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FAKE_KEY = "sk-chaos"
TERMINAL = ("succeeded", "failed", "cancelled")
PG_ADMIN_URL = os.environ.get("CHAOS_PG_ADMIN_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
BROKERS = ("redis", "rabbitmq")


@dataclass(frozen=True)
class FakeSpec:
    """A provider of the chain, served by one fake process."""

    name: str  # the provider's name in LLM_PROVIDERS
    flavor: str = "openai"
    args: tuple[str, ...] = ()  # more fake_provider flags (faults, limits)
    env: dict[str, str] = field(default_factory=dict)  # more <NAME>_* settings

    def provider_env(self, url: str) -> dict[str, str]:
        prefix = self.name.upper()
        base = {"anthropic": url, "google": f"{url}/v1beta/openai/",
                "groq": f"{url}/openai/v1"}.get(self.name, f"{url}/v1")
        env = {f"{prefix}_BASE_URL": base, f"{prefix}_API_KEY": FAKE_KEY,
               f"{prefix}_TPM": "10000000", f"{prefix}_RPM": "100000"}
        if self.name not in ("anthropic", "google", "groq", "openai"):
            # A custom endpoint: the fake speaks OpenAI's structured outputs.
            env[f"{prefix}_MODEL"] = f"{self.name}-model"
            env[f"{prefix}_STRUCTURED_OUTPUT"] = "json_schema"
        return env | {f"{prefix}_{k}": v for k, v in self.env.items()}


class Stack:
    """Start everything on enter; stop everything we started on exit, by PID."""

    def __init__(self, name: str, log_dir: Path, *, latency_s: float,
                 fakes: tuple[FakeSpec, ...] = (FakeSpec("fake"),), private_pg: bool = False,
                 workers: int = 2, concurrency: int = 20, hard_timeout_s: float = 300,
                 env: dict[str, str] | None = None, broker: str = "redis") -> None:
        if broker not in BROKERS:
            raise ValueError(f"broker {broker!r}: choose from {', '.join(BROKERS)}")
        self.name, self.log_dir, self.latency_s = name, log_dir, latency_s
        self.broker = broker
        self.broker_url = ""  # the Redis URL, or the AMQP URL of the scenario's vhost
        self.specs, self.private_pg = fakes, private_pg
        self.n_workers, self.concurrency = workers, concurrency
        self.hard_timeout_s, self.extra_env = hard_timeout_s, env or {}
        self.fakes: dict[str, FakeProcess] = {}
        self.workers: list[Worker] = []
        self.stopped_on_purpose: set[str] = set()  # workers the scenario itself killed
        self.pg: PgCluster | None = None
        self.overrun = False
        self._stack = ExitStack()
        self._started = time.monotonic()

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start(self) -> None:
        s = self._stack
        watchdog = threading.Timer(self.hard_timeout_s, self._kill_everything)
        watchdog.daemon = True
        watchdog.start()
        s.callback(watchdog.cancel)
        self.redis = RedisServer(self.log_dir)
        s.callback(self.redis.close)
        self.redis.start()
        broker_env: dict[str, str] = {}
        if self.broker == "rabbitmq":
            self.broker_url = s.enter_context(rabbitmq_vhost(f"chaos-{self.name}"))
            broker_env["CELERY_BROKER_URL"] = self.broker_url
        else:
            self.broker_url = self.redis.url
        if self.private_pg:
            self.pg = PgCluster()
            s.callback(self.pg.close)
            self.pg.start()
            self.db_url = create_database(self.pg.admin_url, "masterplan")
        else:
            self.db_url = s.enter_context(server_database(PG_ADMIN_URL))
        provider_env: dict[str, str] = {}
        for spec in self.specs:
            fake = FakeProcess(spec.name, self.log_dir, "--flavor", spec.flavor, "--api-key",
                               FAKE_KEY, "--latency-s", str(self.latency_s), *spec.args)
            s.callback(fake.close)
            self.fakes[spec.name] = fake
            provider_env |= spec.provider_env(fake.url)
        env = clean_env(REDIS_URL=self.redis.url, DATABASE_URL=self.db_url, API_KEYS=API_KEY,
                        REDIS_KEY_PREFIX=f"chaos-{uuid.uuid4().hex[:8]}", LOG_LEVEL="INFO",
                        LLM_PROVIDERS=",".join(spec.name for spec in self.specs),
                        **broker_env, **provider_env, **self.extra_env)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        for i in range(self.n_workers):
            w = Worker("ab"[i] if i < 2 else str(i), env, self.log_dir, self.concurrency)
            s.callback(w.close)
            self.workers.append(w)
        self.api = Api(env, self.log_dir)
        s.callback(self.api.close)
        for w in self.workers:
            w.wait_ready()
        self.http = httpx.Client(base_url=self.api.base, headers=AUTH, timeout=10)
        s.callback(self.http.close)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _kill_everything(self) -> None:
        """The hard timeout: every process of this scenario, now (the waits then fail fast)."""
        self.overrun = True
        procs = [w.proc for w in self.workers] + [f.proc for f in self.fakes.values()]
        if getattr(self, "api", None) is not None:
            procs.append(self.api.proc)
        if self.redis.proc is not None:
            procs.append(self.redis.proc)
        for p in procs:
            if p.popen.poll() is None:
                kill_tree(p.pid)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def died(self) -> dict[str, str]:
        """Workers that exited without the scenario stopping them, and their last words."""
        return {w.name: w.last_words() for w in self.workers
                if not w.alive() and w.name not in self.stopped_on_purpose}

    # ------------------------------------------------------------ the client's side

    def submit(self, n: int, *, label: str = "job") -> list[str]:
        ids = []
        for i in range(n):
            r = self.http.post("/v1/jobs", json={"idea": f"chaos {self.name} {label} #{i}: "
                                                          "a marketplace for used lab equipment"})
            if r.status_code != 202:
                raise AssertionError(f"POST /v1/jobs answered {r.status_code}: {r.text[:300]}")
            ids.append(r.json()["id"])
        return ids

    def statuses(self, ids: list[str]) -> dict[str, str | None]:
        """Each job's status over HTTP (None when the API did not answer it)."""
        out: dict[str, str | None] = {}
        for job_id in ids:
            try:
                r = self.http.get(f"/v1/jobs/{job_id}", timeout=5)
                out[job_id] = r.json().get("status") if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                out[job_id] = None
        return out

    def wait_finished(self, ids: list[str], until: float) -> bool:
        """Poll until every job is terminal or `until` (time.time()) passes; True if all are."""
        left = list(ids)
        while left:
            done = self.statuses(left)
            left = [j for j in left if done[j] not in TERMINAL]
            if not left or time.time() > until or self.overrun:
                break
            time.sleep(0.25)
        return not left

    def fake_stats(self) -> dict[str, dict[str, Any]]:
        return {name: fake.stats() for name, fake in self.fakes.items()}

    def in_flight(self) -> int:
        return sum(s["in_flight"] for s in self.fake_stats().values())

    def in_flight_on(self, worker: Worker) -> int:
        """Provider requests open right now whose client connection belongs to `worker`."""
        ports = worker.local_ports()
        return sum(1 for s in self.fake_stats().values() for p in s["in_flight_ports"]
                   if p in ports)

    def measure(self, result: Result) -> Result:
        measure_sql(self.db_url, result)
        measure_fakes(self.fake_stats(), result)
        return result
