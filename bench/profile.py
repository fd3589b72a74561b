"""Our overhead per job without Celery: the pipeline's step functions called in this process.

For N jobs: create the job, run its stages in order — the five personas, the synthesis and
the critique (the function the task calls), against PostgreSQL and Redis, the stub provider with zero
latency and the token bucket on. Reports CPU and wall milliseconds per job and what each job
costs in round trips: SQL statements, transactions, connection checkouts (each one a
`pool_pre_ping` round trip) and Redis round trips. With `profile=True` it also writes a
pyinstrument profile to bench/results/profile.txt.
"""

from __future__ import annotations

import time
from typing import Any

from bench import harness as H

IDEA = "a marketplace for used lab equipment"


class _Counters:
    """SQL statements, transactions and checkouts (engine events) and Redis round trips."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.sql = self.tx = self.checkouts = self.redis = 0
        self._engine = engine
        self._hooks = [
            (engine, "before_cursor_execute", self._on_sql),
            (engine, "commit", self._on_tx),
            (engine.pool, "checkout", self._on_checkout),
        ]
        for target, name, fn in self._hooks:
            event.listen(target, name, fn)
        import redis.connection as rc

        self._rc = rc
        self._orig_send = rc.AbstractConnection.send_packed_command
        counters = self

        def send(conn: Any, command: Any, check_health: bool = True) -> Any:
            counters.redis += 1
            return counters._orig_send(conn, command, check_health)

        rc.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]

    def _on_sql(self, *_: Any) -> None:
        self.sql += 1

    def _on_tx(self, *_: Any) -> None:
        self.tx += 1

    def _on_checkout(self, *_: Any) -> None:
        self.checkouts += 1

    def snapshot(self) -> tuple[int, int, int, int]:
        return self.sql, self.tx, self.checkouts, self.redis

    def close(self) -> None:
        from sqlalchemy import event

        for target, name, fn in self._hooks:
            event.remove(target, name, fn)
        self._rc.AbstractConnection.send_packed_command = self._orig_send  # type: ignore[method-assign]


def stub_env(db_url: str, redis_db: int = H.OURS_DB, **extra: str) -> dict[str, str]:
    """The stub provider with zero latency behind the token bucket (limits far above the load)."""
    return {"REDIS_URL": H.redis_url(redis_db), "DATABASE_URL": db_url, "LLM_PROVIDERS": "stub",
            "STUB_TPM": "1000000000", "STUB_RPM": "100000000", "API_KEYS": H.API_KEY, **extra}


def run_in_process(n_jobs: int, *, warmup: int = 10, profile: bool = False) -> dict[str, float]:
    """Per-job cost of our pipeline code in one process (no broker)."""
    from masterplan import pipeline as P
    from masterplan.db import queries as q
    from masterplan.runtime import build_runtime
    from masterplan.stages import pipeline

    H.flush_redis(H.OURS_DB)
    with H.fresh_database("mp_bench_prof") as db:
        rt = build_runtime(H.settings_for(stub_env(db, LOG_LEVEL="WARNING")))

        def job() -> None:
            with rt.sessions.begin() as s:
                jid = q.create_job(s, owner="bench", idea=IDEA, context=None, deadline_s=900).id
            for stage in pipeline().names:
                P.run_stage(rt, jid, stage)

        for _ in range(warmup):
            job()
        counters = _Counters(rt.engine)
        before = counters.snapshot()
        profiler = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(n_jobs):
            job()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        after = counters.snapshot()
        counters.close()
        if profiler is not None:
            profiler.stop()
            out = H.LOG_DIR.parent / "profile.txt"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(profiler.output_text(unicode=False, color=False))
            H.log(f"pyinstrument profile written to {out}")
        with rt.engine.connect() as c:
            import sqlalchemy as sa

            done = c.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar()
        rt.close()
    sql, tx, checkouts, rtt = (b - a for a, b in zip(before, after, strict=True))
    return {
        "cpu_ms_per_job": 1000 * cpu / n_jobs,
        "wall_ms_per_job": 1000 * wall / n_jobs,
        "sql_statements_per_job": sql / n_jobs,
        "transactions_per_job": tx / n_jobs,
        "checkouts_per_job": checkouts / n_jobs,
        "redis_round_trips_per_job": rtt / n_jobs,
        "succeeded": float(done or 0) - warmup,
    }
